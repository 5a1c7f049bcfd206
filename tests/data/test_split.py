import numpy as np
import pytest

from rsdml.data.split import (
    check_data_root,
    make_split,
    read_split,
    read_split_csv,
    split_options,
    write_split_csv,
)
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


# --------------------------------------------------------------------------- the contract
def _written(tmp_path, protocol="inductive", **kw):
    paths, labels, classes = _data((10, 10))
    s = make_split(paths, labels, classes, protocol=protocol, seed=4, data_root=tmp_path, **kw)
    f = tmp_path / "split.csv"
    write_split_csv(s, f)
    return s, f


def test_contract_sidecar_records_protocol_seed_fractions_and_data_root(tmp_path):
    import json

    _, f = _written(tmp_path, labeled_fraction=0.3, val_fraction=0.1, test_fraction=0.2)
    meta = json.loads((tmp_path / "split.json").read_text())
    assert meta["protocol"] == "inductive" and meta["seed"] == 4
    assert (meta["labeled_fraction"], meta["val_fraction"], meta["test_fraction"]) == (0.3, 0.1, 0.2)
    assert meta["data_root"] == str(tmp_path.resolve()) and meta["images"] == 20
    r = read_split(f)
    assert r.contract is not None and r.contract.seed == 4 and r.protocol == "inductive"
    assert split_options(f) == {"protocol": "inductive", "labeled_fraction": 0.3,
                                "val_fraction": 0.1, "test_fraction": 0.2}


def test_inductive_split_without_val_or_unlabelled_rows_stays_inductive(tmp_path):
    """The protocol is read from the contract, never guessed from the roles present."""
    paths, labels, classes = _data((3, 3))
    s = make_split(paths, labels, classes, protocol="inductive", labeled_fraction=0.34,
                   val_fraction=0.0, test_fraction=0.67, seed=0)
    assert set(s.roles) == {"labeled", "test"}
    f = tmp_path / "s.csv"
    write_split_csv(s, f)
    assert read_split(f).protocol == "inductive"
    assert read_split_csv(f).protocol == "inductive"


def test_contract_protocol_differs_from_the_callers(tmp_path):
    _, f = _written(tmp_path)
    with pytest.raises(RsdmlError, match="made for --protocol inductive, but --protocol is "
                                         "transductive"):
        read_split(f, protocol="transductive")


def test_csv_edited_after_its_contract_is_refused(tmp_path):
    _, f = _written(tmp_path)
    f.write_text(f.read_text().replace("labeled", "test", 1))
    with pytest.raises(RsdmlError, match="changed after split.json"):
        read_split(f)


def test_older_csv_without_contract_takes_the_callers_protocol_explicitly(tmp_path, caplog):
    s, f = _written(tmp_path)
    (tmp_path / "split.json").unlink()
    with caplog.at_level("WARNING"):
        r = read_split(f, protocol="inductive")
    assert r.protocol == "inductive" and r.contract is None
    assert "no split.json" in caplog.text
    with pytest.raises(RsdmlError, match="unlabeled, val rows, which the transductive"):
        read_split(f, protocol="transductive")


def test_binary_or_malformed_split_file_is_a_one_line_error(tmp_path):
    f = tmp_path / "split.csv"
    f.write_bytes(bytes(range(256)) * 8)
    with pytest.raises(RsdmlError, match="not a split.csv") as e:
        read_split(f)
    assert "\n" not in str(e.value)
    f.write_text("path,class_name,label,role\n\"a.jpg,a,0,labeled\n")
    with pytest.raises(RsdmlError):
        read_split(f)


def test_split_from_another_data_root_is_refused(tmp_path):
    s, f = _written(tmp_path)
    other = tmp_path / "copy"
    other.mkdir()
    with pytest.raises(RsdmlError, match="was made from data folder") as e:
        check_data_root(read_split(f), other, "--split x")
    assert str(tmp_path.resolve()) in str(e.value) and str(other) in str(e.value)
    check_data_root(read_split(f), tmp_path, "--split x")  # its own root: fine
