"""Image sets and image decoding; atomic files, JSONL records and output locks."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from PIL import Image

from synood_kit.data import ImageLoadError, ImageSet, load_image, safe_join
from synood_kit.storage import (
    OutputError,
    OutputLock,
    append_jsonl,
    atomic_path,
    atomic_write_bytes,
    atomic_write_json,
    atomic_write_text,
    read_jsonl,
    remove_stale_temporaries,
)

# ---------------------------------------------------------------- safe_join


def test_safe_join_accepts_paths_inside_the_root(tmp_path):
    assert safe_join(tmp_path, "a/b.png") == tmp_path.resolve() / "a" / "b.png"
    assert safe_join(tmp_path, "a/../b.png") == tmp_path.resolve() / "b.png"


@pytest.mark.parametrize("relative", ["../escape.png", "a/../../escape.png", "a/b/../../../x"])
def test_safe_join_refuses_traversal(tmp_path, relative):
    with pytest.raises(ValueError, match="path traversal"):
        safe_join(tmp_path / "root", relative)


def test_safe_join_refuses_absolute_empty_and_symlinked_escapes(tmp_path):
    root = tmp_path / "root"
    root.mkdir()
    with pytest.raises(ValueError, match="absolute path"):
        safe_join(root, "/etc/passwd")
    for empty in ("", "   "):
        with pytest.raises(ValueError, match="empty"):
            safe_join(root, empty)
    (tmp_path / "outside").mkdir()
    (root / "link").symlink_to(tmp_path / "outside")
    with pytest.raises(ValueError, match="leaves its root"):
        safe_join(root, "link/secret.png")


# ---------------------------------------------------------------- load_image


def test_load_image_rgb_values_and_layout(tmp_path):
    rgb = np.zeros((10, 12, 3), dtype=np.uint8)
    rgb[..., 0], rgb[..., 1], rgb[..., 2] = 255, 51, 0
    rgb[0, 0] = (0, 0, 255)
    Image.fromarray(rgb).save(tmp_path / "x.png")
    x = load_image(tmp_path / "x.png")
    assert x.shape == (3, 10, 12) and x.dtype == torch.float32
    assert x[:, 5, 5].tolist() == pytest.approx([1.0, 0.2, 0.0])
    assert x[:, 0, 0].tolist() == pytest.approx([0.0, 0.0, 1.0])


def test_load_image_greyscale_becomes_three_equal_channels(tmp_path):
    grey = np.arange(10 * 12, dtype=np.uint8).reshape(10, 12)
    Image.fromarray(grey, mode="L").save(tmp_path / "l.png")
    x = load_image(tmp_path / "l.png")
    assert x.shape == (3, 10, 12)
    assert torch.equal(x[0], x[1]) and torch.equal(x[1], x[2])
    np.testing.assert_allclose(x[0].numpy(), grey / 255.0, atol=1e-6)


def test_load_image_rgba_is_composited_over_white(tmp_path):
    rgba = np.zeros((10, 10, 4), dtype=np.uint8)
    rgba[:5] = (0, 0, 0, 0)  # fully transparent black -> white
    rgba[5:] = (0, 0, 0, 255)  # opaque black -> black
    rgba[5, 0] = (255, 0, 0, 51)  # red at alpha 0.2 over white -> (1, 0.8, 0.8)
    Image.fromarray(rgba, mode="RGBA").save(tmp_path / "a.png")
    x = load_image(tmp_path / "a.png")
    assert x.shape == (3, 10, 10)
    assert torch.all(x[:, :5] == 1.0)
    assert torch.all(x[:, 6:] == 0.0)
    assert x[:, 5, 0].tolist() == pytest.approx([1.0, 0.8, 0.8], abs=1 / 255)


def test_load_image_palette_with_transparency(tmp_path):
    im = Image.new("P", (9, 9), 0)
    im.putpalette([10, 20, 30, 200, 100, 0] + [0] * (254 * 3))
    im.paste(1, (0, 0, 9, 4))  # rows 0-3 use colour 1
    im.info["transparency"] = 0  # colour 0 is transparent
    im.save(tmp_path / "p.png", transparency=0)
    x = load_image(tmp_path / "p.png")
    assert x.shape == (3, 9, 9)
    assert x[:, 0, 0].tolist() == pytest.approx([200 / 255, 100 / 255, 0.0])
    assert x[:, 8, 8].tolist() == pytest.approx([1.0, 1.0, 1.0])  # transparent -> white


def test_load_image_sixteen_bit_is_scaled_from_65535(tmp_path):
    bright = np.full((10, 10), 65535, dtype=np.uint16)
    bright[0, 0] = 32768
    dark = np.full((10, 10), 200, dtype=np.uint16)  # a dark 16-bit image must stay dark
    Image.fromarray(bright).save(tmp_path / "bright.png")
    Image.fromarray(dark).save(tmp_path / "dark.png")
    b, d = load_image(tmp_path / "bright.png"), load_image(tmp_path / "dark.png")
    assert b.shape == d.shape == (3, 10, 10)
    assert b[:, 1, 1].tolist() == pytest.approx([1.0] * 3)
    assert b[0, 0, 0].item() == pytest.approx(32768 / 65535)
    assert d[0, 0, 0].item() == pytest.approx(200 / 65535)


def test_load_image_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="image not found"):
        load_image(tmp_path / "missing.png")
    (tmp_path / "junk.png").write_bytes(b"definitely not a png")
    with pytest.raises(ImageLoadError, match="not a readable image"):
        load_image(tmp_path / "junk.png")
    Image.new("RGB", (4, 20)).save(tmp_path / "thin.png")
    with pytest.raises(ImageLoadError, match="too small"):
        load_image(tmp_path / "thin.png")
    Image.new("RGB", (20, 20)).save(tmp_path / "big.png")
    with pytest.raises(ImageLoadError, match="above the limit of 100"):
        load_image(tmp_path / "big.png", max_pixels=100)
    Image.new("RGB", (64, 64), (9, 9, 9)).save(tmp_path / "full.png")
    data = (tmp_path / "full.png").read_bytes()
    (tmp_path / "cut.png").write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageLoadError):
        load_image(tmp_path / "cut.png")


# ---------------------------------------------------------------- ImageSet


def _png(path, side=10):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (side, side), (1, 2, 3)).save(path)


def test_from_folder_labelled(tmp_path):
    for rel in ("dog/b.png", "dog/a.jpg", "cat/x.png", "cat/sub/y.png", ".hidden/z.png"):
        _png(tmp_path / rel)
    (tmp_path / "cat" / "notes.txt").write_text("not an image")
    s = ImageSet.from_folder(tmp_path, name="pets")
    assert s.name == "pets" and s.class_names == ("cat", "dog")
    assert [(it.id, it.label) for it in s.items] == [
        ("cat/sub/y", 0),
        ("cat/x", 0),
        ("dog/a", 1),
        ("dog/b", 1),
    ]
    assert all(it.path.is_absolute() and it.path.is_file() for it in s.items)
    np.testing.assert_array_equal(s.labels, [0, 0, 1, 1])
    # Expected class names fix the label order; a missing one is an error.
    s2 = ImageSet.from_folder(tmp_path, class_names=["dog", "cat"])
    assert [it.label for it in s2.items if it.id.startswith("dog")] == [0, 0]
    with pytest.raises(ValueError, match="missing, e.g. \\['bird'\\]"):
        ImageSet.from_folder(tmp_path, class_names=["cat", "bird"])


def test_from_folder_unlabelled_and_errors(tmp_path):
    _png(tmp_path / "flat" / "a.png")
    _png(tmp_path / "flat" / "deep" / "b.webp")
    s = ImageSet.from_folder(tmp_path / "flat", labelled=False)
    assert s.name == "flat" and s.class_names == ()
    assert [(it.id, it.label) for it in s.items] == [("a", -1), ("deep/b", -1)]
    with pytest.raises(FileNotFoundError, match="image folder not found"):
        ImageSet.from_folder(tmp_path / "nope")
    (tmp_path / "empty" / "cls").mkdir(parents=True)
    with pytest.raises(ValueError, match="holds no images"):
        ImageSet.from_folder(tmp_path / "empty")
    (tmp_path / "noclasses").mkdir()
    with pytest.raises(ValueError, match="no class sub-folders"):
        ImageSet.from_folder(tmp_path / "noclasses")


def test_duplicate_ids_are_rejected(tmp_path):
    # x.png and x.jpg share the id "cls/x".
    _png(tmp_path / "cls" / "x.png")
    _png(tmp_path / "cls" / "x.jpg")
    with pytest.raises(ValueError, match=r"duplicate ids, e.g. \['cls/x'\]"):
        ImageSet.from_folder(tmp_path)


def test_from_file_list(tmp_path):
    data = tmp_path / "data"
    for rel in ("imagenet/a.jpg", "imagenet/b c.jpg", "ood/d.png"):
        _png(data / rel)
    lst = tmp_path / "test_set.txt"
    lst.write_text("# comment\nimagenet/a.jpg 3\n\nimagenet/b c.jpg 7\nood/d.png\n")
    s = ImageSet.from_file_list(lst, data)
    assert s.name == "test_set" and s.root == data.resolve()
    assert [(it.id, it.label) for it in s.items] == [("imagenet/a", 3), ("imagenet/b c", 7), ("ood/d", -1)]
    assert s.items[1].path == data.resolve() / "imagenet" / "b c.jpg"
    bad = tmp_path / "bad.txt"
    bad.write_text("imagenet/a.jpg 1\n../../etc/passwd 0\n")
    with pytest.raises(ValueError, match=r"bad.txt:2: .*path traversal"):
        ImageSet.from_file_list(bad, data)
    (tmp_path / "empty.txt").write_text("# only a comment\n")
    with pytest.raises(ValueError, match="no entries"):
        ImageSet.from_file_list(tmp_path / "empty.txt", data)
    with pytest.raises(FileNotFoundError, match="image list not found"):
        ImageSet.from_file_list(tmp_path / "missing.txt", data)


def test_from_manifest(tmp_path):
    records = [
        {"id": "i0", "path": "img/0.png", "split": "train", "label": 1, "class_name": "dog"},
        {"id": "i1", "path": "img/1.png", "split": "train", "label": 0, "class_name": "cat"},
        {"id": "i2", "path": "img/2.png", "split": "test_ood", "label": -1},
    ]
    manifest = tmp_path / "manifest.jsonl"
    manifest.write_text("\n".join(json.dumps(r) for r in records) + "\n\n")
    train = ImageSet.from_manifest(manifest, "train")
    assert train.name == "train" and train.class_names == ("cat", "dog")
    assert [(it.id, it.label) for it in train.items] == [("i0", 1), ("i1", 0)]
    assert train.items[0].path == tmp_path.resolve() / "img" / "0.png"
    ood = ImageSet.from_manifest(manifest, "test_ood", name="far")
    assert ood.name == "far" and ood.class_names == () and ood.labels.tolist() == [-1]
    with pytest.raises(ValueError, match="no records of split 'val'"):
        ImageSet.from_manifest(manifest, "val")
    broken = tmp_path / "broken.jsonl"
    broken.write_text(json.dumps(records[0]) + "\n" + '{"id": "x", "split": "train"}\n')
    with pytest.raises(ValueError, match=r"broken.jsonl:2: malformed manifest record \(KeyError"):
        ImageSet.from_manifest(broken, "train")
    escaping = tmp_path / "escaping.jsonl"
    escaping.write_text(json.dumps({**records[0], "path": "../outside.png"}) + "\n")
    with pytest.raises(ValueError, match="escaping.jsonl:1: .*path traversal"):
        ImageSet.from_manifest(escaping, "train")
    with pytest.raises(FileNotFoundError, match="manifest not found"):
        ImageSet.from_manifest(tmp_path / "nope.jsonl", "train")


def test_subset_and_fingerprint(tmp_path):
    for k in range(3):
        _png(tmp_path / "c" / f"{k}.png")
    s = ImageSet.from_folder(tmp_path)
    sub = s.subset([2, 0], name="two")
    assert sub.name == "two" and [it.id for it in sub.items] == ["c/2", "c/0"]
    assert s.fingerprint() == ImageSet.from_folder(tmp_path).fingerprint()
    assert sub.fingerprint() != s.fingerprint()


# ---------------------------------------------------------------- atomic files


def test_atomic_writes_leave_only_the_target(tmp_path):
    atomic_write_json(tmp_path / "a.json", {"x": [1, 2]})
    atomic_write_text(tmp_path / "b.txt", "héllo")
    atomic_write_bytes(tmp_path / "sub" / "c.bin", b"\x00\x01")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json", "b.txt", "sub"]
    assert [p.name for p in (tmp_path / "sub").iterdir()] == ["c.bin"]
    assert json.loads((tmp_path / "a.json").read_text()) == {"x": [1, 2]}
    assert (tmp_path / "b.txt").read_text(encoding="utf-8") == "héllo"
    assert (tmp_path / "sub" / "c.bin").read_bytes() == b"\x00\x01"


def test_a_failed_write_never_leaves_a_partial_file(tmp_path):
    target = tmp_path / "result.json"
    atomic_write_json(target, {"version": 1})
    with pytest.raises(RuntimeError, match="killed"), atomic_path(target) as tmp:
        tmp.write_text('{"version": 2, "trunc')
        raise RuntimeError("killed mid-write")
    assert json.loads(target.read_text()) == {"version": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["result.json"]
    # An OS error while writing becomes an OutputError naming the path; the old file is kept.
    with pytest.raises(OutputError, match="cannot write .*result.json"), atomic_path(target) as tmp:
        tmp.write_text("partial")
        raise OSError(28, "No space left on device")
    assert json.loads(target.read_text()) == {"version": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["result.json"]


def test_a_writer_that_writes_nothing_is_an_output_error(tmp_path):
    with pytest.raises(OutputError, match="missing.json"), atomic_path(tmp_path / "missing.json"):
        pass
    assert not list(tmp_path.iterdir())


def test_remove_stale_temporaries(tmp_path):
    (tmp_path / ".x.json.tmp-123").write_text("{")
    (tmp_path / ".y.safetensors.tmp-9").write_text("")
    (tmp_path / "keep.json").write_text("{}")
    assert remove_stale_temporaries(tmp_path) == 2
    assert [p.name for p in tmp_path.iterdir()] == ["keep.json"]


# ---------------------------------------------------------------- JSONL


def test_read_jsonl_skips_a_truncated_last_line_and_reports_it(tmp_path):
    path = tmp_path / "log.jsonl"
    for step in range(3):
        append_jsonl(path, {"step": step, "loss": 1.0 / (step + 1)})
    with open(path, "a", encoding="utf-8") as f:
        f.write('{"step": 3, "lo')  # a crash mid-line
    records, problems = read_jsonl(path)
    assert [r["step"] for r in records] == [0, 1, 2]
    assert len(problems) == 1 and "log.jsonl:4" in problems[0] and "malformed" in problems[0]
    with pytest.raises(ValueError, match="log.jsonl:4"):
        read_jsonl(path, strict=True)


def test_read_jsonl_skips_non_objects_and_missing_files(tmp_path):
    path = tmp_path / "mixed.jsonl"
    path.write_text('{"a": 1}\n[1, 2]\n\n{"b": 2}\n')
    records, problems = read_jsonl(path)
    assert records == [{"a": 1}, {"b": 2}]
    assert len(problems) == 1 and "mixed.jsonl:2" in problems[0] and "JSON object" in problems[0]
    assert read_jsonl(tmp_path / "none.jsonl") == ([], [])


# ---------------------------------------------------------------- output lock


def test_output_lock_refuses_a_second_holder(tmp_path):
    out = tmp_path / "run"
    second_holder = pytest.raises(OutputError, match=rf"in use by pid {os.getpid()} \(mining\)")
    with OutputLock(out, purpose="mining"), second_holder, OutputLock(out):
        pass
    # Released on exit: the folder can be locked again.
    with OutputLock(out):
        pass


def test_output_lock_held_by_another_process_is_released_when_it_dies(tmp_path):
    out = tmp_path / "run"
    holder = textwrap.dedent(
        f"""
        import sys, time
        from synood_kit.storage import OutputLock
        with OutputLock({str(out)!r}, purpose="other run"):
            print("locked", flush=True)
            time.sleep(60)
        """
    )
    proc = subprocess.Popen([sys.executable, "-c", holder], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "locked"
        with pytest.raises(OutputError, match=rf"in use by pid {proc.pid} \(other run\)"), OutputLock(out):
            pass
    finally:
        proc.kill()
        proc.wait(timeout=30)
        proc.stdout.close()
    with OutputLock(out):  # the kernel dropped the dead process's lock: no stale lock
        pass
