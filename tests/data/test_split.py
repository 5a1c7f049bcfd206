import numpy as np
import pytest

from rsdml.data.split import make_split, read_split_csv, write_split_csv
from rsdml.errors import RsdmlError


def _data(counts=(10, 7, 25, 3)):
    paths, labels = [], []
    for c, n in enumerate(counts):
        paths += [f"c{c}/img{i:03d}.jpg" for i in range(n)]
        labels += [c] * n
    return paths, np.array(labels), [f"c{c}" for c in range(len(counts))]


def test_transductive_split_is_stratified_reproducible_and_disjoint():
    paths, labels, classes = _data()
    a = make_split(paths, labels, classes, labeled_fraction=0.2, seed=3)
    b = make_split(paths, labels, classes, labeled_fraction=0.2, seed=3)
    c = make_split(paths, labels, classes, labeled_fraction=0.2, seed=4)
    assert (a.roles == b.roles).all()
    assert not (a.roles == c.roles).all()
    assert set(a.roles) == {"labeled", "test"}
    for k, n in enumerate((10, 7, 25, 3)):
        lab = ((a.labels == k) & (a.roles == "labeled")).sum()
        assert lab == max(1, round(0.2 * n))
    # the paper's protocol: the unlabelled pool is the test set, labels hidden elsewhere
    assert (a.unlabeled_index() == a.index("test")).all()
    assert len(np.intersect1d(a.index("labeled"), a.index("test"))) == 0


def test_at_least_one_labelled_image_per_class():
    paths, labels, classes = _data((2, 3, 4))
    s = make_split(paths, labels, classes, labeled_fraction=0.01, seed=0)
    for k in range(3):
        assert ((s.labels == k) & (s.roles == "labeled")).sum() == 1


def test_inductive_roles_disjoint_and_test_never_unlabelled():
    paths, labels, classes = _data((40, 30, 20))
    s = make_split(paths, labels, classes, protocol="inductive", labeled_fraction=0.2,
                   val_fraction=0.1, test_fraction=0.3, seed=0)
    assert set(s.roles) == {"labeled", "unlabeled", "val", "test"}
    assert (s.unlabeled_index() == s.index("unlabeled")).all()
    assert len(np.intersect1d(s.unlabeled_index(), s.index("test"))) == 0
    for k, n in enumerate((40, 30, 20)):
        m = s.labels == k
        assert ((s.roles == "test") & m).sum() == round(0.3 * n)
        assert ((s.roles == "val") & m).sum() == round(0.1 * n)


def test_inductive_needs_two_images_per_class():
    paths, labels, classes = _data((5, 1))
    with pytest.raises(RsdmlError, match="c1"):
        make_split(paths, labels, classes, protocol="inductive")


def test_split_csv_roundtrip_and_missing_images(tmp_path):
    paths, labels, classes = _data((6, 6))
    s = make_split(paths, labels, classes, seed=1)
    f = tmp_path / "split.csv"
    write_split_csv(s, f)
    r = read_split_csv(f)
    assert r.paths == s.paths and (r.labels == s.labels).all() and (r.roles == s.roles).all()
    assert r.classes == classes and r.protocol == "transductive"
    with pytest.raises(RsdmlError, match="missing"):
        read_split_csv(f, data_root=tmp_path)


def test_split_csv_bad_role(tmp_path):
    f = tmp_path / "split.csv"
    f.write_text("path,class_name,label,role\na.jpg,a,0,labeled\nb.jpg,a,0,trained\n")
    with pytest.raises(RsdmlError, match="trained"):
        read_split_csv(f)
