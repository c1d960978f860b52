"""Small embedding databases made by the tests themselves."""

import numpy as np

from data.database import load_embedding_file, save_embedding_file, write_meta


def make_gaussian_db(root, n_per_file=(300,), dim=16, n_classes=4, seed=0, names=None, zero_dims=0):
    """A small embedding database of class-conditional Gaussians (classes are separable).

    `zero_dims` leading dimensions are exactly 0, as a ReLU backbone gives."""
    rng = np.random.default_rng(seed)
    centers = rng.normal(0, 3, size=(n_classes, dim))
    names = names or (
        ["all"] if len(n_per_file) == 1 else [f"client_{i}" for i in range(len(n_per_file))]
    )
    files = {}
    for name, n in zip(names, n_per_file):
        y = rng.integers(0, n_classes, size=n)
        x = centers[y] + rng.normal(0, 1, size=(n, dim))
        x[:, :zero_dims] = 0.0
        save_embedding_file(root / f"{name}.npz", x, y)
        files[name] = {"n": int(n), "class_counts": np.bincount(y, minlength=n_classes).tolist()}
    write_meta(
        root,
        {
            "dataset": "gauss",
            "backbone": "none",
            "classes": [f"c{i}" for i in range(n_classes)],
            "files": files,
            "embedding_dim": dim,
        },
    )
    return root


def make_patient_db(root, per_patient=3):
    """The small Gaussian database (300 records) grouped into patients of `per_patient`
    consecutive records, each patient of one label (metadata column `patient`)."""
    db = make_gaussian_db(root, n_per_file=(300,))
    f = load_embedding_file(db / "all.npz")
    patients = np.arange(300) // per_patient
    labels = f.labels[patients * per_patient]
    save_embedding_file(db / "all.npz", f.embeddings, labels, patients[:, None], ("patient",))
    return db
