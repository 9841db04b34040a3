"""image_input.py: what a served model accepts, converted to uint8 NHWC or refused with the contract."""
import numpy as np
import pytest

from mlflow_unlearn.image_input import ImageInputError, expected_input, to_uint8_images

GRAY, RGB = (1, 8, 8), (3, 4, 4)


def test_uint8_passes_unchanged_and_one_channel_may_omit_its_axis():
    x = np.arange(2 * 64, dtype=np.uint8).reshape(2, 8, 8)
    out, warnings = to_uint8_images(x, GRAY)
    assert out.dtype == np.uint8 and out.shape == (2, 8, 8, 1) and np.array_equal(out[..., 0], x)
    assert warnings == []


def test_floats_in_the_unit_range_are_rounded_to_pixels():
    x = np.array([0.0, 0.5, 1.0, 0.2]).reshape(1, 2, 2, 1)
    out, _ = to_uint8_images(x, (1, 2, 2))
    assert out.ravel().tolist() == [0, 128, 255, 51]


def test_json_numbers_keep_their_kind():
    """REST delivers an object array of Python numbers: 16 is a pixel value, 16.0 a float out of range."""
    ints = np.array([[[[16]] * 2] * 2], dtype=object)
    out, warnings = to_uint8_images(ints, (1, 2, 2))
    assert out.dtype == np.uint8 and out.max() == 16 and warnings  # digits-like range: answered, with a warning
    with pytest.raises(ImageInputError, match="above 1"):
        to_uint8_images(np.array([[[[16.0]] * 2] * 2], dtype=object), (1, 2, 2))


def test_the_digits_warning_names_the_conversion_and_only_fires_in_their_range():
    _, warnings = to_uint8_images(np.full((1, 8, 8, 1), 16, dtype=np.int64), GRAY)
    assert "np.rint(x * 255 / 16).astype(np.uint8)" in warnings[0]
    assert to_uint8_images(np.full((1, 8, 8, 1), 17, dtype=np.int64), GRAY)[1] == []


@pytest.mark.parametrize("x, words", [
    (np.full((1, 4, 4, 3), 1.5), "above 1"),
    (np.full((1, 4, 4, 3), -0.1), "below 0"),
    (np.full((1, 4, 4, 3), np.inf), "NaN or infinite"),
    (np.full((1, 4, 4, 3), 256), "above 255"),
    (np.full((1, 4, 4, 3), -3), "below 0"),
])
def test_out_of_range_values_name_the_contract_and_the_fix_not_the_values(x, words):
    with pytest.raises(ImageInputError) as e:
        to_uint8_images(x, RGB)
    msg = str(e.value)
    assert words in msg and expected_input(RGB) in msg
    assert "1.5" not in msg and "256" not in msg and "-3" not in msg and "-0.1" not in msg


def test_an_empty_batch_is_an_empty_batch():
    out, _ = to_uint8_images(np.zeros((0, 4, 4, 3), dtype=np.float32), RGB)
    assert out.shape == (0, 4, 4, 3) and out.dtype == np.uint8


def test_rgb_channels_first_gets_the_transpose_hint():
    with pytest.raises(ImageInputError, match=r"wrong input shape \(2, 3, 4, 4\).*x.transpose\(0, 2, 3, 1\)"):
        to_uint8_images(np.zeros((2, 3, 4, 4), dtype=np.uint8), RGB)
