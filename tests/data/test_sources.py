"""Image sources: MedMNIST npz reading (memory-mapped / streamed), Camelyon17 sampling,
Fashion-MNIST IDX files, digits."""

import numpy as np
import pytest
from helpers.images import make_camelyon, make_fashionmnist, make_medmnist, write_idx

from data.camelyon_source import open_camelyon17, sample_counts
from data.medmnist_source import medmnist_flags, open_medmnist
from data.source_base import ArrayReader, ConcatReader, NpyStreamReader, SourceError, open_npz_array
from data.sources import open_digits, open_fashionmnist, open_source


@pytest.mark.parametrize("compressed", [False, True])
def test_npz_array_reads_rows_without_loading_the_member(tmp_path, compressed):
    path = make_medmnist(tmp_path, size=64, counts=(30, 4, 5), rgb=True, compressed=compressed)
    expected = np.load(path)["train_images"]
    reader = open_npz_array(path, "train_images")
    if compressed:
        assert isinstance(reader, NpyStreamReader)
        np.testing.assert_array_equal(reader.read(3, 7), expected[3:7])
        # Sequential: the stream has inflated exactly up to row 7, not the whole member.
        assert reader.position == 7
        assert reader._fh.tell() == reader.member.header_len + 7 * 64 * 64 * 3
        np.testing.assert_array_equal(reader.read(20, 30), expected[20:30])
        np.testing.assert_array_equal(reader.read(0, 2), expected[0:2])  # backwards: reopens
    else:
        assert isinstance(reader, ArrayReader)
        assert isinstance(reader.array, np.memmap)
        np.testing.assert_array_equal(reader.read(3, 7), expected[3:7])
        np.testing.assert_array_equal(reader.read(0, 30), expected)
    assert len(reader) == 30
    reader.close()


def test_concat_reader_spans_its_parts():
    a, b = np.arange(5 * 4).reshape(5, 2, 2), 100 + np.arange(3 * 4).reshape(3, 2, 2)
    reader = ConcatReader([ArrayReader(a), ArrayReader(b)])
    assert len(reader) == 8
    np.testing.assert_array_equal(np.stack(reader.read(3, 7)), np.concatenate([a, b])[3:7])


@pytest.mark.parametrize(
    ("size", "rgb", "compressed"), [(28, False, False), (64, True, True), (28, True, True)]
)
def test_open_medmnist_pools_train_and_val(tmp_path, size, rgb, compressed):
    path = make_medmnist(tmp_path, size=size, counts=(9, 4, 5), rgb=rgb, compressed=compressed)
    raw = np.load(path)
    with open_medmnist(tmp_path, "organsmnist", size) as src:
        assert [f.name for f in src.files] == ["train", "test"]
        assert src.classes[:3] == ["bladder", "femur-left", "femur-right"]
        assert len(src.classes) == 11 and src.task == "multi-class"
        assert src.source_size == size
        train, test = src.files
        assert len(train) == 13 and len(test) == 5
        np.testing.assert_array_equal(
            train.labels, np.concatenate([raw["train_labels"], raw["val_labels"]])[:, 0]
        )
        assert train.labels.dtype == np.int64
        assert train.metadata_fields == ("official_split", "official_index")
        np.testing.assert_array_equal(train.metadata[:, 0], [0] * 9 + [1] * 4)
        np.testing.assert_array_equal(train.metadata[:, 1], list(range(9)) + list(range(4)))
        np.testing.assert_array_equal(test.metadata[:, 0], [2] * 5)
        images = np.stack(train.reader.read(0, 13))
        np.testing.assert_array_equal(
            images, np.concatenate([raw["train_images"], raw["val_images"]])
        )
        np.testing.assert_array_equal(np.stack(test.reader.read(0, 5)), raw["test_images"])
        assert src.info["npz_storage"] == ("compressed" if compressed else "stored")


def test_medmnist_refuses_chestmnist_3d_and_unknown(tmp_path):
    with pytest.raises(SourceError, match="--dataset chestmnist: .*multi-label"):
        open_source(dataset="chestmnist", dataset_root=tmp_path)
    with pytest.raises(SourceError, match="--dataset organmnist3d: .*3D"):
        open_source(dataset="organmnist3d", dataset_root=tmp_path)
    with pytest.raises(SourceError, match="--dataset foomnist: unknown dataset; choose one of"):
        open_source(dataset="foomnist", dataset_root=tmp_path)
    assert "chestmnist" not in medmnist_flags() and "organsmnist" in medmnist_flags()


def test_medmnist_input_errors_name_the_file(tmp_path):
    with pytest.raises(SourceError, match=r"organsmnist_224\.npz not found .*--download"):
        open_medmnist(tmp_path, "organsmnist", 224)
    with pytest.raises(SourceError, match="--size 100"):
        open_source(dataset="organsmnist", dataset_root=tmp_path, size=100)
    # images of the wrong size for the file name
    path = make_medmnist(tmp_path, size=28)
    path.rename(tmp_path / "organsmnist_64.npz")
    with pytest.raises(SourceError, match=r"organsmnist_64\.npz: 'train_images' has shape"):
        open_medmnist(tmp_path, "organsmnist", 64)
    # a missing array
    arrays = dict(np.load(make_medmnist(tmp_path, size=28)))
    del arrays["val_labels"]
    np.savez(tmp_path / "organsmnist.npz", **arrays)
    with pytest.raises(SourceError, match=r"organsmnist\.npz: missing array\(s\) \['val_labels'\]"):
        open_medmnist(tmp_path, "organsmnist", 28)
    # labels out of range
    arrays = dict(np.load(make_medmnist(tmp_path, size=28)))
    arrays["test_labels"][0] = 11
    np.savez(tmp_path / "organsmnist.npz", **arrays)
    with pytest.raises(SourceError, match=r"'test_labels' holds labels in \[.*, 11\]"):
        open_medmnist(tmp_path, "organsmnist", 28)


def test_option_scope_is_checked():
    with pytest.raises(SourceError, match="--size applies to MedMNIST"):
        open_source(dataset="digits", dataset_root=".", size=28)
    with pytest.raises(SourceError, match="--s_frac applies to camelyon17 and fashionmnist only"):
        open_source(dataset="organsmnist", dataset_root=".", s_frac=0.5)


def test_sample_counts_equal_share_capped_and_fractions():
    sizes = {0: 1000, 1: 2000, 2: 950, 3: 5000, 4: 900}
    assert sample_counts(sizes, 4600) == {0: 920, 1: 920, 2: 920, 3: 920, 4: 900}
    assert sample_counts({0: 10, 1: 10, 2: 10}, 8) == {0: 3, 1: 3, 2: 2}
    assert sample_counts({0: 10, 1: 3}, 0.5) == {0: 5, 1: 2}
    assert sample_counts({0: 10, 1: 1}, 0.1) == {0: 1, 1: 1}  # at least one per hospital
    assert sample_counts({0: 10, 1: 3}, 1.0) == {0: 10, 1: 3}
    for bad in (0, -1, 2.5, float("nan")):
        with pytest.raises(SourceError, match="--s_frac"):
            sample_counts({0: 10}, bad)


def test_camelyon_one_file_per_hospital_sampled_and_seeded(tmp_path):
    folder, rows = make_camelyon(tmp_path, {0: 7, 1: 9, 3: 2})
    with open_camelyon17(tmp_path, s_frac=9, seed=5) as src:
        assert [f.name for f in src.files] == ["client_0", "client_1", "client_3"]
        assert [len(f) for f in src.files] == [3, 3, 2]  # 3 each, capped at 2
        assert src.classes == ["normal", "tumor"] and src.source_size == 96
        first = {f.name: f.metadata[:, 0].tolist() for f in src.files}
        for f in src.files:
            center = int(f.name.split("_")[1])
            assert f.metadata_fields[0] == "row" and f.metadata_fields[6] == "center"
            for r, label, meta in zip(f.metadata[:, 0], f.labels, f.metadata):
                row = rows[r]
                assert row["center"] == center and meta[6] == center
                assert label == row["tumor"]
                assert list(meta[1:6]) == [
                    int(row["patient"]),
                    row["node"],
                    row["x_coord"],
                    row["y_coord"],
                    row["slide"],
                ]
            assert list(f.metadata[:, 0]) == sorted(f.metadata[:, 0])
            assert f.info["available"] == {0: 7, 1: 9, 3: 2}[center]
            # the reader returns the PNG bytes of exactly these patches
            data = f.reader.read(0, len(f))
            assert all(d[:8] == b"\x89PNG\r\n\x1a\n" for d in data)
    with open_camelyon17(tmp_path, s_frac=9, seed=5) as again:
        assert {f.name: f.metadata[:, 0].tolist() for f in again.files} == first
    with open_camelyon17(tmp_path, s_frac=9, seed=6) as other:
        assert {f.name: f.metadata[:, 0].tolist() for f in other.files} != first
    with open_camelyon17(folder, s_frac=0.5, seed=5) as half:  # root may be the WILDS folder
        assert [len(f) for f in half.files] == [4, 4, 1]


def test_camelyon_reads_only_sampled_patches_and_names_missing_ones(tmp_path):
    folder, rows = make_camelyon(tmp_path, {0: 6, 1: 6})
    with open_camelyon17(tmp_path, s_frac=2, seed=1) as src:
        picked = {int(r) for f in src.files for r in f.metadata[:, 0]}
    patches = sorted((folder / "patches").rglob("*.png"))
    unpicked = [r for r in range(len(rows)) if r not in picked]

    def png(r):
        row = rows[r]
        stem = f"patient_{row['patient']}_node_{row['node']}"
        return folder / "patches" / stem / f"patch_{stem}_x_{row['x_coord']}_y_{row['y_coord']}.png"

    assert len(patches) == 12 and all(png(r).is_file() for r in range(12))
    for r in unpicked:
        png(r).unlink()
    with open_camelyon17(tmp_path, s_frac=2, seed=1) as src:  # absent, unsampled: not needed
        assert sum(len(f) for f in src.files) == 2
    png(min(picked)).unlink()
    with pytest.raises(SourceError, match=r"\.png: patch listed in .*metadata\.csv not found"):
        open_camelyon17(tmp_path, s_frac=2, seed=1)


def test_camelyon_layout_errors(tmp_path):
    with pytest.raises(SourceError, match=r"camelyon17_v1\.0/metadata\.csv not found"):
        open_camelyon17(tmp_path)
    folder, _ = make_camelyon(tmp_path, {0: 2})
    text = (folder / "metadata.csv").read_text().replace("tumor", "label")
    (folder / "metadata.csv").write_text(text)
    with pytest.raises(SourceError, match=r"metadata\.csv: missing column\(s\) \['tumor'\]"):
        open_camelyon17(tmp_path)


def test_digits_are_the_sklearn_images():
    from sklearn.datasets import load_digits

    ref = load_digits()
    with open_digits() as src:
        (f,) = src.files
        assert f.name == "all" and len(f) == 1797 and src.source_size == 8
        np.testing.assert_array_equal(f.labels, ref.target)
        np.testing.assert_array_equal(f.metadata[:, 0], np.arange(1797))
        images = f.reader.read(0, 1797)
        assert images.dtype == np.uint8 and images.shape == (1797, 8, 8)
        assert images.max() == 255 and images.min() == 0
        np.testing.assert_array_equal(images, np.rint(ref.images * 255 / 16).astype(np.uint8))


def test_fashionmnist_reads_the_official_idx_files(tmp_path):
    written = make_fashionmnist(tmp_path, n_train=30, n_test=10)
    with open_fashionmnist(tmp_path) as src:
        assert src.dataset == "fashionmnist" and src.classes[0] == "T-shirt/top"
        assert len(src.classes) == 10 and src.source_size == 28
        train, test = src.files
        assert (train.name, len(train), test.name, len(test)) == ("train", 30, "test", 10)
        for f, (x, y) in zip(src.files, (written["train"], written["test"])):
            np.testing.assert_array_equal(f.labels, y)
            np.testing.assert_array_equal(np.stack(f.reader.read(0, len(f))), x)
        assert train.metadata_fields == ("split", "index")
        np.testing.assert_array_equal(test.metadata[:, 0], 1)
        np.testing.assert_array_equal(test.metadata[:, 1], np.arange(10))


def test_fashionmnist_seeded_subset(tmp_path):
    written = make_fashionmnist(tmp_path, n_train=30, n_test=10)
    with open_fashionmnist(tmp_path, s_frac=8, seed=3) as src:
        train, test = src.files
        assert (len(train), len(test)) == (6, 2)  # 8 shared 30:10
        rows = train.metadata[:, 1]
        np.testing.assert_array_equal(train.labels, written["train"][1][rows])
        np.testing.assert_array_equal(np.stack(train.reader.read(0, 6)), written["train"][0][rows])
    with open_fashionmnist(tmp_path, s_frac=8, seed=3) as again:
        np.testing.assert_array_equal(again.files[0].metadata, train.metadata)
    with open_fashionmnist(tmp_path, s_frac=8, seed=4) as other:
        assert not np.array_equal(other.files[0].metadata, train.metadata)
    with open_fashionmnist(tmp_path, s_frac=0.5) as half:
        assert [len(f) for f in half.files] == [15, 5]
    with pytest.raises(SourceError, match="--s_frac 41: the dataset has 40 images"):
        open_fashionmnist(tmp_path, s_frac=41)


def test_fashionmnist_bad_files(tmp_path):
    with pytest.raises(SourceError, match="train-images-idx3-ubyte.gz not found.*--download"):
        open_fashionmnist(tmp_path)
    make_fashionmnist(tmp_path)
    write_idx(tmp_path / "t10k-labels-idx1-ubyte.gz", np.zeros((10, 2)))  # 2-D labels
    with pytest.raises(SourceError, match="t10k-labels-idx1-ubyte.gz: not an unsigned-byte IDX"):
        open_fashionmnist(tmp_path)
    write_idx(tmp_path / "t10k-labels-idx1-ubyte.gz", np.zeros(9))
    with pytest.raises(SourceError, match="9 labels for 10 images"):
        open_fashionmnist(tmp_path)
    (tmp_path / "t10k-images-idx3-ubyte.gz").write_bytes(b"not gzip at all")
    with pytest.raises(SourceError, match="t10k-images-idx3-ubyte.gz: not a readable IDX"):
        open_fashionmnist(tmp_path)
