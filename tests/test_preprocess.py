"""Display rendering of DICOM pixels and the letterboxed model input."""

from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from pydicom import Dataset
from pydicom.pixels.encoders.base import get_encoder
from pydicom.uid import UID, JPEG2000Lossless, JPEGLSLossless, RLELossless

from dicom_node.model import preprocess
from dicom_node.model.preprocess import (
    InputSpec,
    PreprocessError,
    display_uint8,
    load_image_file,
    prepare,
    read_display,
    render_for_display,
    to_model_input,
)
from dicom_node.synthetic.phantom_dicom import phantom_dataset
from dicom_node.synthetic.phantoms import make_phantom

STUDY = "1.2.826.0.1.3680043.8.498.777"


def _phantom_ds(**kwargs: object) -> Dataset:
    phantom = make_phantom(np.random.default_rng(0), findings=["Nodule"], size=(96, 80))
    return phantom_dataset(phantom, patient_id="P", patient_name="A^B", study_uid=STUDY, **kwargs)  # type: ignore[arg-type]


def _raw_ds(values: np.ndarray, bits: int, **attrs: object) -> Dataset:
    """A minimal CR-like dataset carrying `values` as stored pixels plus `attrs`."""
    ds = _phantom_ds(modality="CR", bits_stored=16, window=False)
    for key in ("WindowCenter", "WindowWidth", "RescaleIntercept", "RescaleSlope", "RescaleType"):
        if key in ds:
            del ds[key]
    ds.set_pixel_data(values, "MONOCHROME2", bits, generate_instance_uid=False)
    for key, value in attrs.items():
        setattr(ds, key, value)
    return ds


def test_phantom_display_matches_the_phantom() -> None:
    """Through modality LUT and window, a phantom instance shows its image up to quantisation."""
    phantom = make_phantom(np.random.default_rng(0), findings=["Mass"], size=(64, 64))
    ds = phantom_dataset(
        phantom,
        patient_id="P",
        patient_name="A^B",
        study_uid=STUDY,
        modality="CR",
        rescale_intercept=-1024,
    )
    shown = render_for_display(ds)
    assert shown.dtype == np.float32 and shown.shape == (64, 64)
    assert np.abs(shown - phantom.image).max() < 1e-3


def test_modality_lut_then_window_are_applied() -> None:
    """Rescale (slope 2, intercept -1000) then the first window give the expected display."""
    stored = np.array([[0, 500], [750, 1000]], np.uint16)
    ds = _raw_ds(
        stored,
        12,
        RescaleSlope="2",
        RescaleIntercept="-1000",
        RescaleType="US",
        WindowCenter=["0.5", "100"],
        WindowWidth=["1001", "50"],
    )
    # output values -1000, 0, 500, 1000; window [-500, 500] by PS3.3 C.11.2.1.2 (LINEAR)
    expected = np.clip((np.array([[-1000, 0], [500, 1000]]) + 500) / 1000, 0, 1)
    assert np.allclose(render_for_display(ds), expected, atol=1e-6)


@pytest.mark.parametrize(
    ("bits", "signed", "attrs"),
    [
        (16, False, {"WindowCenter": "32768", "WindowWidth": "40000"}),
        (
            12,
            False,
            {
                "RescaleSlope": "2",
                "RescaleIntercept": "-1000",
                "RescaleType": "US",
                "WindowCenter": ["0.5", "100"],
                "WindowWidth": ["1001", "50"],
            },
        ),
        (
            12,
            True,
            {
                "RescaleSlope": "1",
                "RescaleIntercept": "-1024",
                "RescaleType": "HU",
                "WindowCenter": "-600",
                "WindowWidth": "1500",
                "VOILUTFunction": "LINEAR",
            },
        ),
        (14, False, {"RescaleSlope": "0.5", "WindowCenter": "8000", "WindowWidth": "2.5"}),
    ],
)
def test_float32_window_path_equals_pydicom_float64(
    bits: int, signed: bool, attrs: dict[str, object], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The one-pass float32 rescale + LINEAR window gives what pydicom's float64 modality LUT
    and windowing give (within 1e-5): unsigned, signed, rescaled, multi-valued windows, and a
    slope without an intercept (which pydicom ignores, and so must we)."""
    rng = np.random.default_rng(bits)
    lo, hi = (-(2 ** (bits - 1)), 2 ** (bits - 1)) if signed else (0, 2**bits)
    stored = rng.integers(lo, hi, (40, 30)).astype(np.int16 if signed else np.uint16)
    ds = _raw_ds(stored, bits, **attrs)
    assert preprocess._linear_window(ds) is not None  # the fast path applies
    fast = render_for_display(ds)
    monkeypatch.setattr(preprocess, "_linear_window", lambda _ds: None)  # the general path
    general = render_for_display(ds)
    assert fast.dtype == general.dtype == np.float32
    assert np.abs(fast - general).max() < 1e-5
    assert 0.0 < float(general.mean()) < 1.0  # the window shows something


def test_voi_lut_sequence_is_applied() -> None:
    """A VOI LUT Sequence maps stored values through its table, scaled by its bit depth."""
    stored = np.array([[0, 1], [2, 3]], np.uint16)
    item = Dataset()
    item.LUTDescriptor = [4, 0, 8]
    item.LUTData = [255, 0, 128, 64]
    ds = _raw_ds(stored, 8)
    ds.VOILUTSequence = [item]
    expected = np.array([[255, 0], [128, 64]]) / 255
    assert np.allclose(render_for_display(ds), expected, atol=1e-6)


def test_without_voi_the_bits_stored_range_is_shown() -> None:
    """With no (or an empty) window and no VOI LUT, 0 .. 2^BitsStored - 1 spans the display."""
    stored = np.array([[0, 1023], [512, 256]], np.uint16)
    assert np.allclose(render_for_display(_raw_ds(stored, 10)), stored / 1023, atol=1e-6)
    assert np.allclose(render_for_display(_raw_ds(stored, 12)), stored / 4095, atol=1e-6)
    empty_window = _raw_ds(stored, 10, WindowCenter="", WindowWidth="")
    assert np.allclose(render_for_display(empty_window), stored / 1023, atol=1e-6)


def test_bits_above_bits_stored_are_ignored() -> None:
    """Bits above BitsStored (overlay or garbage) do not change the display."""
    clean = np.array([[0, 1023], [512, 7]], np.uint16)
    dirty = clean | np.uint16(0xF000)
    ds = _raw_ds(clean, 10)
    shown_clean = render_for_display(ds)
    ds.PixelData = dirty.tobytes()  # set_pixel_data would refuse out-of-range values
    shown_dirty = render_for_display(ds)
    assert np.array_equal(shown_clean, shown_dirty)


@pytest.mark.parametrize("bits", [8, 10, 12, 14, 16])
def test_monochrome1_displays_like_monochrome2(bits: int) -> None:
    """MONOCHROME1 (inverted storage) is shown exactly as the equivalent MONOCHROME2."""
    mono1 = render_for_display(_phantom_ds(photometric="MONOCHROME1", bits_stored=bits))
    mono2 = render_for_display(_phantom_ds(photometric="MONOCHROME2", bits_stored=bits))
    assert np.allclose(mono1, mono2, atol=1e-6)


@pytest.mark.parametrize(
    ("photometric", "shape"),
    [
        ("MONOCHROME1", "IDENTITY"),
        ("MONOCHROME1", "INVERSE"),
        ("MONOCHROME1", None),
        ("MONOCHROME2", "IDENTITY"),
        ("MONOCHROME2", "INVERSE"),
    ],
)
def test_polarity_follows_the_presentation_lut_shape_as_dcmtk_renders_it(
    tmp_path: Path, photometric: str, shape: str | None
) -> None:
    """DCMTK dcm2pnm (first window) and the node show every photometric interpretation and
    Presentation LUT Shape alike: the shape decides where stated (a MONOCHROME1 image with
    IDENTITY is not inverted), MONOCHROME1 is inverted where it is not."""
    ds = _phantom_ds(photometric=photometric, modality="CR")
    if shape is None:
        del ds.PresentationLUTShape
    else:
        ds.PresentationLUTShape = shape
    path = tmp_path / "image.dcm"
    ds.save_as(path, enforce_file_format=True)
    png = tmp_path / "dcmtk.png"
    subprocess.run(["/usr/bin/dcm2pnm", "--write-png", "+Wi", "1", str(path), str(png)], check=True)
    dcmtk = np.asarray(Image.open(png), np.float32) / 255.0
    ours = render_for_display(ds)
    assert float(np.corrcoef(ours.ravel(), dcmtk.ravel())[0, 1]) > 0.99
    assert float(np.abs(ours - dcmtk).mean()) < 0.01


@pytest.mark.parametrize("syntax", [RLELossless, JPEGLSLossless, JPEG2000Lossless])
def test_compressed_transfer_syntaxes_decode_like_uncompressed(syntax: UID) -> None:
    """Lossless RLE, JPEG-LS and JPEG 2000 instances show exactly the uncompressed display."""
    if not get_encoder(syntax).is_available:
        pytest.skip(f"no encoder for {syntax.name}")
    ds = _phantom_ds(photometric="MONOCHROME1", bits_stored=12)
    expected = render_for_display(ds)
    ds.compress(syntax, generate_instance_uid=False)
    assert ds.file_meta.TransferSyntaxUID == syntax
    assert np.array_equal(render_for_display(ds), expected)


def test_unsupported_pixel_data_raises_with_a_reason() -> None:
    """Colour, multi-frame and missing pixel data raise PreprocessError with a reason."""
    rgb = _phantom_ds()
    rgb.set_pixel_data(np.zeros((4, 4, 3), np.uint8), "RGB", 8, generate_instance_uid=False)
    with pytest.raises(PreprocessError, match="colour"):
        render_for_display(rgb)
    frames = _phantom_ds()
    frames.set_pixel_data(
        np.zeros((2, 4, 4), np.uint16), "MONOCHROME2", 12, generate_instance_uid=False
    )
    with pytest.raises(PreprocessError, match="multi-frame"):
        render_for_display(frames)
    empty = _phantom_ds()
    del empty.PixelData
    with pytest.raises(PreprocessError, match="no Pixel Data") as info:
        render_for_display(empty)
    assert info.value.reason == "no Pixel Data"


def test_letterbox_keeps_aspect_and_pads_centrally() -> None:
    """A tall image fills the height, is centred across, and the sides hold the pad value."""
    image = np.full((100, 50), 0.8, np.float32)
    x, box = to_model_input(image, size=64, mean=0.5, std=0.25)
    assert x.shape == (1, 64, 64) and x.dtype == torch.float32
    assert (box.height, box.width, box.pad_top, box.pad_left, box.size) == (64, 32, 0, 16, 64)
    assert box.scale == pytest.approx(0.64)
    pad = (0.0 - 0.5) / 0.25
    assert torch.all(x[0, :, :16] == pad) and torch.all(x[0, :, 48:] == pad)
    assert torch.allclose(x[0, :, 16:48], torch.full((64, 32), (0.8 - 0.5) / 0.25))


def test_letterbox_of_a_wide_image_pads_top_and_bottom() -> None:
    """A wide image fills the width; padding goes above and below; three channels on request."""
    image = np.random.default_rng(0).random((30, 90)).astype(np.float32)
    x, box = to_model_input(image, size=48, mean=0.0, std=1.0, channels=3)
    assert x.shape == (3, 48, 48) and torch.equal(x[0], x[2])
    assert (box.height, box.width, box.pad_top, box.pad_left) == (16, 48, 16, 0)
    assert torch.all(x[:, :16] == 0) and torch.all(x[:, 32:] == 0)


def test_no_flip_in_model_input() -> None:
    """The left half of the image stays on the left of the model input (no flips)."""
    image = np.zeros((64, 64), np.float32)
    image[:, :32] = 1.0
    x, _ = to_model_input(image, size=32, mean=0.0, std=1.0)
    assert x[0, :, :16].mean() > 0.9 and x[0, :, 16:].mean() < 0.1


def test_display_uint8_shrinks_keeping_aspect() -> None:
    """display_uint8 caps the longer side, keeps the aspect ratio, and maps [0, 1] to 0..255."""
    image = np.linspace(0, 1, 300 * 200, dtype=np.float32).reshape(300, 200)
    small = display_uint8(image, max_side=150)
    assert small.dtype == np.uint8 and small.shape == (150, 100)
    assert display_uint8(np.ones((10, 20), np.float32)).tolist() == [[255] * 20] * 10


@pytest.mark.parametrize("top", [255, 65535])
def test_load_image_file_reads_8_and_16_bit_png(tmp_path: Path, top: int) -> None:
    """8- and 16-bit grey PNGs load as float32 in [0, 1] scaled by their bit depth."""
    values = np.array([[0, top // 2], [top, 1]], np.uint8 if top == 255 else np.uint16)
    path = tmp_path / "x.png"
    Image.fromarray(values).save(path)
    loaded = load_image_file(path)
    assert loaded.dtype == np.float32
    assert np.allclose(loaded, values.astype(np.float64) / top, atol=1e-6)


def test_read_display_and_prepare_are_the_one_path(tmp_path: Path) -> None:
    """read_display picks PNG or DICOM by suffix; prepare is to_model_input with a bundle's
    spec; a file that is neither is a PreprocessError naming it."""
    ds = _phantom_ds()
    ds.save_as(tmp_path / "a.dcm", enforce_file_format=True)
    shown = render_for_display(ds)
    assert np.array_equal(read_display(tmp_path / "a.dcm"), shown)
    Image.fromarray(np.rint(shown * 255).astype(np.uint8)).save(tmp_path / "a.png")
    assert np.abs(read_display(tmp_path / "a.png") - shown).max() <= 0.5 / 255 + 1e-6
    spec = InputSpec(size=48, mean=0.4, std=0.2, channels=3)
    x, box = prepare(shown, spec)
    y, box2 = to_model_input(shown, size=48, mean=0.4, std=0.2, channels=3)
    assert torch.equal(x, y) and box == box2
    (tmp_path / "b.txt").write_text("not an image")
    with pytest.raises(PreprocessError, match=r"b\.txt"):
        read_display(tmp_path / "b.txt")
