import torch

from phasegate_runtime.site import block_hidden, decoder_layers, layer_module_path, replace_block_hidden


def test_tensor_output_is_not_indexed_by_batch_row() -> None:
    hidden = torch.arange(2 * 3 * 4, dtype=torch.float32).reshape(2, 3, 4)
    # output[0] on a tensor would be batch row 0 with shape [3, 4]; the site must be the whole tensor.
    assert block_hidden(hidden) is hidden


def test_tuple_output_yields_first_element() -> None:
    hidden = torch.ones(2, 3, 4)
    assert block_hidden((hidden, "cache")) is hidden


def test_replace_keeps_container_type() -> None:
    old, new = torch.zeros(1, 2, 3), torch.ones(1, 2, 3)
    assert replace_block_hidden(old, new) is new
    replaced = replace_block_hidden((old, "extra"), new)
    assert isinstance(replaced, tuple)
    assert replaced[0] is new
    assert replaced[1] == "extra"


def test_block_hidden_rejects_non_3d() -> None:
    try:
        block_hidden((torch.ones(3, 4),))
    except TypeError:
        return
    raise AssertionError("2-D tensor accepted as block hidden states")


def test_decoder_layers_and_path(load_tiny) -> None:  # type: ignore[no-untyped-def]
    loaded = load_tiny("qwen2")
    assert len(decoder_layers(loaded.model)) == loaded.num_layers == 3
    assert layer_module_path(loaded.model, 1) == "model.layers.1"
