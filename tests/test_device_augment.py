"""train.augment_on = "device": the loader draws, the device applies to the whole batch. The same draws as the
loader's own path, and on a CPU the same pixels (but for hue and blur, kornia's kernels: under 1% of
pixels, by a grey level or two; and a warp's rare sample on a pixel's edge); an op without a batched form
is a one-line error; a cell is the same whatever the worker count."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch
from torchvision.transforms import v2

from bench.data.device_augment import APPLY, Replay, check, leaves
from bench.data.loaders import ArrayDataset
from bench.errors import UserError
from bench.techniques import build_augment
from tests.support import photo

SIZE, SCALE = 56, 64


RNG = np.random.default_rng(0)
IMAGES = [photo(RNG, h, w) for h, w in [(64, 85), (73, 64), (64, 64), (90, 64), (64, 120), (64, 70)] * 4]


class InMemory(ArrayDataset):
    def stored(self, row: int) -> np.ndarray:
        return IMAGES[row]


# spec -> whether the device's pixels equal the loader's bit for bit (else: under 1% of them differ, by 2 at most)
SPECS = {"flip": True, "vflip": True, "crop_flip": True, "grayscale:0.5": True, "erasing:1.0": True,
         '["rrc", "hflip"]': True, '["hflip", "rrc"]': True, "randaugment": True, "trivialaugment": True,
         "autoaugment": True, '["rrc", "brightness:0.5", "contrast:0.5"]': True,
         '["rrc", "hflip", "jitter"]': True, '[{"op": "jitter", "strength": 0.4, "hue": 0.2}]': False,
         "blur:1.0": False, "rotate:15": True, '["hflip", "zoom", "translate"]': True}


def _spec(text: str):
    return json.loads(text) if text.startswith("[") else text


def _both(spec: str, epoch: int = 1) -> tuple[torch.Tensor, torch.Tensor, object]:
    transform = build_augment(_spec(spec), SIZE)
    n = len(IMAGES)
    loader = InMemory(None, np.arange(n), np.zeros(n), SIZE, SCALE, transform, seed=3)
    device = InMemory(None, np.arange(n), np.zeros(n), SIZE, SCALE, transform, seed=3)
    device.on_device()
    items = [(epoch, place, i) for place, i in enumerate(range(n))]
    draws, _ = device.__getitems__(items)
    return loader.__getitems__(items)[0], draws.apply(torch.device("cpu")), draws


@pytest.mark.parametrize("spec", SPECS)
def test_the_device_applies_the_loaders_draws_to_the_same_pixels(spec):
    on_loader, on_device, _ = _both(spec)
    assert on_device.dtype == torch.uint8 and on_device.shape == on_loader.shape == (len(IMAGES), 3, SIZE, SIZE)
    diff = (on_loader.int() - on_device.int()).abs()
    if SPECS[spec]:
        assert torch.equal(on_loader, on_device), f"{int((diff > 0).sum())} pixels differ"
    else:
        assert diff.max() <= 2 and (diff > 0).float().mean() < 0.01, (int(diff.max()), float(diff.float().mean()))
    # and it augments: another epoch draws other augmentations
    assert not torch.equal(on_device, _both(spec, epoch=2)[1])


def test_every_batched_kernel_is_checked_against_the_loader():
    tested = {type(leaf) for spec in SPECS for leaf in leaves(build_augment(_spec(spec), SIZE))}
    assert tested == set(APPLY), set(APPLY) - tested


def test_a_leading_random_resized_crop_ships_only_its_windows():
    _, on_device, draws = _both('["rrc", "hflip"]')
    windows = int(draws.shapes.prod(1).sum()) * 3
    assert draws.pixels.numel() == windows < sum(im.size for im in IMAGES)
    assert len(draws) == len(IMAGES)
    # draws hold no tensors: from a worker, each tensor would cross through a file descriptor of its own
    assert not [v for leaf in draws.draws for p in leaf if isinstance(p, dict) for v in p.values()
                if isinstance(v, torch.Tensor)]


def test_replay_is_picklable_without_its_recorder():
    import pickle

    replay = Replay(build_augment(["rrc", "jitter"], SIZE))
    torch.manual_seed(0)
    first = replay.draw((64, 80, 3))
    copy = pickle.loads(pickle.dumps(replay))
    torch.manual_seed(0)
    again = copy.draw((64, 80, 3))
    assert first[0] == again[0] and np.array_equal(first[1]["fn_idx"], again[1]["fn_idx"])


@pytest.mark.parametrize("spec", ["rand-m9-mstd0.5", '["hflip", "original"]'])
def test_an_op_without_a_batched_form_is_named(spec):
    with pytest.raises(ValueError, match="has no batched form on the device.*augment_on = \"loader\""):
        check(build_augment(_spec(spec), 32))


@pytest.mark.parametrize(("extra", "fragment"), [
    ('augment = "rand-m9-mstd0.5"\naugment_on = "device"', "TimmPolicy"),
    ('augment = "hflip"\naugment_on = "device"\noffline = 2', "offline copies"),
    ('augment = "hflip"\naugment_on = "device"\naug_splits = 3\nloss = "jsd"', "aug_splits views"),
])
def test_bad_device_augment_settings_are_one_line_errors(write_suite, extra, fragment):
    from bench.config import load_suite
    from bench.suite import expand

    with pytest.raises(UserError) as e:
        expand(load_suite(write_suite(extra)))
    assert fragment in str(e.value) and e.value.key.startswith("train") and "\n" not in str(e.value), str(e.value)


def test_a_device_augmented_cell_is_the_same_whatever_the_worker_count(write_suite, tmp_path):
    from bench import api
    from bench.cell import RunOptions
    from bench.progress import LogProgress
    from tests.support import outputs

    path = write_suite('augment = ["rrc", "hflip", "jitter"]\naugment_on = "device"\n')
    loader = api.plan(write_suite('augment = ["rrc", "hflip", "jitter"]\n', name="loader.toml"), check=False)
    ids = {}
    for workers in (0, 2):
        planned = api.plan(path, check=False, overrides=[f"data.workers={workers}"])
        ids[workers] = [c.id for c in planned.cells]
        summary = api.run(planned, results=tmp_path / str(workers), device="cpu",
                          options=RunOptions(isolate=False, threads=1), progress=LogProgress(open(os.devnull, "w")))
        assert len(summary.ran) == 1 and not summary.failed, summary.failed
    assert ids[0] == ids[2] != [c.id for c in loader.cells]  # its own cell: a GPU's kernels differ in the last bits
    assert outputs(tmp_path / "0" / "tiny") == outputs(tmp_path / "2" / "tiny")


# ----------------------------------------------------------------------------- data.decode = "device"
@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """Photo-like JPEGs of several shapes, one PNG (decoded on the host, the same pixels), as files."""
    from PIL import Image

    root, rng, out = tmp_path_factory.mktemp("files"), np.random.default_rng(1), []
    for i, (w, h) in enumerate([(200, 150), (150, 210), (64, 64), (300, 200), (180, 120), (90, 100)]):
        path = root / (f"{i}.png" if i == 2 else f"{i}.jpg")
        Image.fromarray(photo(rng, h, w)).save(path, **({"quality": 90} if path.suffix == ".jpg" else {}))
        out.append((str(path), w, h))
    return out


@pytest.mark.parametrize(("spec", "crops"), [("none", "cpu"), ('["rrc", "hflip", "jitter"]', "cpu"),
                                             ('["rrc", "hflip", "jitter"]', "batched"), ("crop_flip", "cpu")])
def test_files_decoded_on_the_device_are_the_host_decoders_pixels_within_a_grey_level(files, spec, crops, monkeypatch):
    """libjpeg's reduced-scale decoding and Pillow's resize on the host, a full decode and torchvision's
    resize on the device: the same images, the same draws, pixels a grey level apart on average (the crops
    resized image by image, as on a CPU, or as one batch, as on an accelerator)."""
    from bench.data import windows
    from bench.data.cache import stored_index

    monkeypatch.setattr(windows, "PER_IMAGE_ON", ("cpu",) if crops == "cpu" else ())
    from bench.data.loaders import FileDataset

    paths, widths, heights = map(list, zip(*files, strict=True))
    shapes = stored_index(np.array(widths), np.array(heights), SCALE)[:, 1:]
    transform = None if spec == "none" else build_augment(_spec(spec), SIZE)
    n = len(paths)
    host = FileDataset(paths, SCALE, np.arange(n), np.zeros(n), SIZE, SCALE, transform, seed=1)
    device = FileDataset(paths, SCALE, np.arange(n), np.zeros(n), SIZE, SCALE, transform, seed=1, shapes=shapes)
    if transform is not None:
        device.on_device()
    items = [(1, place, i) for place, i in enumerate(range(n))] if transform is not None else list(range(n))
    draws = device.__getitems__(items)[0]
    assert draws.pixels.numel() == sum(os.path.getsize(p) for p in paths)  # the files as read, nothing decoded
    on_host, on_device = host.__getitems__(items)[0], draws.apply(torch.device("cpu"))
    diff = (on_host.int() - on_device.int()).abs().float()
    assert on_device.shape == on_host.shape and diff.mean() < 1.5 and diff.flatten().quantile(0.99) <= 8, \
        (float(diff.mean()), float(diff.flatten().quantile(0.99)))
    if spec == "none":  # the PNG, stored at its own size: one decoder's pixels, both sides
        assert torch.equal(on_host[2], on_device[2])


@pytest.mark.parametrize(("data", "train", "fragment"), [
    ('decode = "device"', "", 'set cache = "none"'),
    ('cache = "none"\ndecode = "device"', 'augment = "hflip"', 'train.augment_on = "device" too'),
    ('cache = "none"\ndecode = "device"', 'augment = "hflip"\noffline = 2', "no pixels for offline copies"),
])
def test_decoding_on_the_device_needs_no_cache_and_augmentation_there(write_suite, data, train, fragment):
    from bench.config import load_suite
    from bench.suite import expand
    from tests.conftest import TINY

    with pytest.raises(UserError) as e:
        expand(load_suite(write_suite(train, base=TINY.replace("[data]\n", f"[data]\n{data}\n"))))
    assert fragment in str(e.value) and "\n" not in str(e.value), str(e.value)


def test_a_cell_decoding_and_augmenting_on_the_device_gives_the_same_bits_whatever_the_worker_count(write_suite, tmp_path):
    """No cache, files decoded and augmented on the device: the worker count changes no bit of it."""
    from bench import api
    from bench.cell import RunOptions
    from bench.progress import LogProgress
    from tests.conftest import TINY
    from tests.support import outputs

    base = TINY.replace("[data]\n", '[data]\ncache = "none"\ndecode = "device"\n')
    path = write_suite('augment = ["rrc", "hflip", "jitter"]\naugment_on = "device"\n', base=base)
    for workers in (0, 2):
        planned = api.plan(path, check=False, overrides=[f"data.workers={workers}"])
        summary = api.run(planned, results=tmp_path / str(workers), device="cpu",
                          options=RunOptions(isolate=False, threads=1), progress=LogProgress(open(os.devnull, "w")))
        assert len(summary.ran) == 1 and not summary.failed, summary.failed
    assert outputs(tmp_path / "0" / "tiny") == outputs(tmp_path / "2" / "tiny")


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=[  # nvJPEG's own turn, in `nox -s gpu`
    pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")])])
@pytest.mark.parametrize("orientation", range(1, 9))
def test_the_device_decodes_a_jpeg_as_stored_whatever_its_exif_orientation(tmp_path, monkeypatch, orientation,
                                                                          device):
    """TorchCodec turns an image as its EXIF orientation says; the host's decoding (Pillow) and the stored
    sizes (the header's) do not, so the device undoes the turn (no falling back on the host's decoding). A
    wrong flip of these photos is 59-102 grey levels off on average, a wrong transpose of the wrong shape;
    nvJPEG's IDCT and chroma upsampling, at most 2 (torchvision's own bound for it)."""
    from PIL import Image

    from bench.data import cache, device_decode

    monkeypatch.setattr(cache, "load_image", lambda *a: pytest.fail("the device's decoder fell back on the host's"))

    image = Image.fromarray(photo(np.random.default_rng(orientation), 24, 40))
    exif = Image.Exif()
    exif[0x0112] = orientation
    path = tmp_path / "turned.jpg"
    image.save(path, quality=95, exif=exif.tobytes())
    data = np.fromfile(path, dtype=np.uint8)
    assert device_decode.orientation(data) == orientation
    got = device_decode.decode(torch.from_numpy(data), np.array([data.size]), np.array([[24, 40]]), np.array([orientation]),
                                torch.device(device))[0]
    with Image.open(path) as im:
        expected = torch.from_numpy(np.array(im.convert("RGB"))).permute(2, 0, 1)
    assert got.device.type == device and got.shape == expected.shape == (3, 24, 40)
    assert (got.cpu().int() - expected.int()).abs().float().mean() < (2.0 if device == "cuda" else 1.0)


@pytest.mark.parametrize("fmt", ["BMP", "TIFF", "GIF"])
def test_formats_the_devices_decoder_lacks_are_decoded_by_pillow(tmp_path, fmt):
    from PIL import Image

    from bench.data.device_decode import decode

    frames = [Image.fromarray(photo(np.random.default_rng(i), 20, 30)) for i in range(2)]
    path = tmp_path / f"image.{fmt.lower()}"
    frames[0].save(path, format=fmt, **({"save_all": True, "append_images": frames[1:]} if fmt == "GIF" else {}))
    data = np.fromfile(path, dtype=np.uint8)
    got = decode(torch.from_numpy(data), np.array([data.size]), np.array([[20, 30]]), np.array([1]),
                 torch.device("cpu"))[0]
    with Image.open(path) as im:  # the first frame, as the host's decoding takes it
        assert torch.equal(got, torch.from_numpy(np.array(im.convert("RGB"))).permute(2, 0, 1))


WARPS = {"rotate": lambda: v2.RandomRotation(15), "translate, zoom": lambda: v2.RandomAffine(0, (0.1, 0.2), (0.7, 1.3)),
         "all of them, shear too": lambda: v2.RandomAffine(10, (0.1, 0.1), (0.8, 1.2), shear=(-20, 20, -10, 10))}


@pytest.mark.parametrize("warp", WARPS)
def test_warps_sampled_as_one_batch_are_torchvisions_image_by_image(warp, monkeypatch):
    """One grid for the batch (torch's affine_grid, in -1..1) where torchvision builds each image's in pixels:
    the same nearest pixels (at larger sizes a sample on a pixel's edge may round to its neighbour: none here)."""
    from bench.data import device_augment

    torch.manual_seed(0)
    leaf, x = WARPS[warp](), torch.randint(0, 256, (16, 3, 96, 128), dtype=torch.uint8)
    params = [leaf.make_params([x[0]]) for _ in x]
    params[3] = None  # a coin that skipped it (a RandomApply around it)
    one_by_one = device_augment._each(leaf, x, params)
    monkeypatch.setattr(device_augment, "_each", lambda *a: pytest.fail("image by image"))
    batched = device_augment._warp(leaf, x, params)
    assert torch.equal(batched[3], x[3])
    assert torch.equal(batched, one_by_one)
    assert not torch.equal(batched, x)


@pytest.mark.parametrize("other", [{"interpolation": v2.InterpolationMode.BILINEAR}, {"fill": 128}, {"expand": True}])
def test_a_warp_the_batch_does_not_take_goes_image_by_image(other, monkeypatch):
    from bench.data import device_augment

    leaf, x = v2.RandomRotation(15, **other), torch.randint(0, 256, (4, 3, 32, 40), dtype=torch.uint8)
    params = [{"angle": 30.0 * (n + 1)} for n in range(len(x))]
    if other.get("expand"):  # each image expanded to hold its turn: one angle, one size to stack
        params = [{"angle": 30.0}] * len(x)
    expected = device_augment._each(leaf, x, params)
    monkeypatch.setattr(torch.nn.functional, "affine_grid", lambda *a, **k: pytest.fail("batched"))
    assert torch.equal(device_augment._warp(leaf, x, params), expected)


@pytest.mark.parametrize("value", [0, 127.7, (10.9, 200.2, 255.9)])
def test_erasing_as_one_masked_write_is_torchvisions_image_by_image(value, monkeypatch):
    from bench.data import device_augment

    torch.manual_seed(0)
    leaf, x = v2.RandomErasing(1.0, value=value), torch.randint(0, 256, (6, 3, 40, 50), dtype=torch.uint8)
    params = [{k: v.numpy() if isinstance(v, torch.Tensor) else v for k, v in leaf.make_params([x[0]]).items()}
              for _ in x]  # as the recorder ships them: arrays
    params[2] = None
    expected = device_augment._each(leaf, x, params)
    monkeypatch.setattr(device_augment, "_each", lambda *a: pytest.fail("image by image"))
    got = device_augment._erase(leaf, x, params)
    assert torch.equal(got, expected) and not torch.equal(got, x) and torch.equal(got[2], x[2])


def test_a_random_resized_crop_a_coin_skipped_keeps_the_image():
    """A crop inside a RandomApply, after one that set the size: the images it skipped pass as they are."""
    from bench.data import device_augment

    leaf, x = v2.RandomResizedCrop(24, antialias=True), torch.randint(0, 256, (4, 3, 24, 24), dtype=torch.uint8)
    params = [leaf.make_params([x[0]]) for _ in x]
    params[1] = None
    got = device_augment._resized_crop(leaf, x, params)
    assert got.shape == x.shape and torch.equal(got[1], x[1]) and not torch.equal(got[0], x[0])
