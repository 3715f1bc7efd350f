from __future__ import annotations

import numpy as np
import pytest
import torch

from phasegate_runtime.direction import compute_direction, steering_delta
from phasegate_runtime.generation import Batch


class FakeBackend:
    """Returns preset activations per batch, so the arithmetic can be checked exactly."""

    name = "hooks"

    def __init__(self, table: dict[str, list[list[float]]]) -> None:
        self.table = table

    def activations(
        self, batch: Batch, layer: int, position: int, explicit_positions: bool = True
    ) -> torch.Tensor:
        return torch.tensor(self.table[batch.prompts[0]])

    def steered_generate(self, *args: object) -> torch.Tensor:
        raise NotImplementedError


def _batch(name: str) -> Batch:
    return Batch((name,), torch.zeros(1, 1, dtype=torch.long), torch.ones(1, 1, dtype=torch.long))


def test_mean_difference_over_rows_across_batches_then_normalised() -> None:
    backend = FakeBackend({"h1": [[4.0, 0.0], [2.0, 0.0]], "h2": [[0.0, 0.0]], "s1": [[0.0, -4.0]]})
    d = compute_direction(backend, [_batch("h1"), _batch("h2")], [_batch("s1")], 0, -1)  # type: ignore[arg-type]
    # harmful mean (2, 0) - harmless mean (0, -4) = (2, 4): norm sqrt(20)
    assert d.norm_before_normalisation == pytest.approx(np.sqrt(20.0), rel=1e-7)
    np.testing.assert_allclose(d.unit, np.array([2.0, 4.0]) / np.sqrt(20.0), rtol=1e-7)
    assert d.unit.dtype == np.float32


def test_identical_means_are_rejected() -> None:
    backend = FakeBackend({"a": [[1.0, 1.0]], "b": [[1.0, 1.0]]})
    with pytest.raises(ValueError, match="undefined"):
        compute_direction(backend, [_batch("a")], [_batch("b")], 0, -1)  # type: ignore[arg-type]


def test_delta_is_alpha_times_unit_in_model_dtype() -> None:
    backend = FakeBackend({"a": [[3.0, 4.0]], "b": [[0.0, 0.0]]})
    d = compute_direction(backend, [_batch("a")], [_batch("b")], 0, -1)  # type: ignore[arg-type]
    delta = steering_delta(d.unit, 2.0, torch.bfloat16, torch.device("cpu"))
    assert delta.dtype == torch.bfloat16
    assert delta.float().tolist() == pytest.approx([1.2, 1.6], abs=1e-2)


@pytest.mark.parametrize(
    ("alpha", "dtype", "what"),
    [
        (1e-46, torch.float32, "2 of its 3 elements underflow to 0"),
        (1e-41, torch.bfloat16, "underflow to 0"),  # a subnormal float32, below bfloat16's smallest
        (1e39, torch.float32, "it overflows"),
        (1e5, torch.float16, "it overflows"),
        (0.0, torch.float32, "2 of its 3 elements underflow to 0"),
    ],
)
def test_a_delta_that_loses_the_direction_in_the_cast_is_refused(
    alpha: float, dtype: torch.dtype, what: str
) -> None:
    unit = np.array([0.6, 0.0, 0.8], dtype=np.float32)
    with pytest.raises(ValueError, match=f"steering.alpha: .* does not fit .*{what}"):
        steering_delta(unit, alpha, dtype, torch.device("cpu"))
    # A zero element of the direction may stay zero.
    assert steering_delta(unit, 1e-3, dtype, torch.device("cpu"))[1].item() == 0.0
