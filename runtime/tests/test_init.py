import subprocess
import sys

import phasegate_runtime


def test_every_export_resolves() -> None:
    for name in phasegate_runtime.__all__:
        assert getattr(phasegate_runtime, name) is not None


def test_spec_errors_need_no_torch() -> None:
    code = "import sys, phasegate_runtime.cli; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_all_matches_lazy_table() -> None:
    assert sorted(phasegate_runtime.__all__) == sorted(phasegate_runtime._EXPORTS)
