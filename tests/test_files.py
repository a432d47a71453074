"""The one way freelabel writes a file (freelabel/files.py): every writer in the package goes through it
(read off the source), and a writer killed at any stage of any kind of file leaves the old file or the
new one, never a torn one; the next write tidies what the killed one left."""

import ast
import json
import os
import signal
import traceback
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import freelabel
import freelabel.files as files
import freelabel.run as rundir
from freelabel.config import load_recipe, resolve
from freelabel.errors import DiskFullError

PACKAGE = Path(freelabel.__file__).parent

# ------------------------------------------------------------------------------ every writer, read off the source
# Calls that write a file at the path they are given: (name of the call, index of the path argument; -1: the
# object the method is called on).
WRITES = {
    "write_text": -1,
    "write_bytes": -1,
    "save_file": 1,
    "save": 0,  # torch.save's is its second argument, PIL's and faiss' the first: both checked below
    "write_index": 1,
    "savefig": 0,
    "save_pretrained": 0,
    "export": 2,  # torch.onnx.export(model, args, path)
    "copy": 1,
    "copyfile": 1,
    "copytree": 1,
    "replace": 1,  # os.replace(src, dst), Path.replace(dst): see _targets
    "rename": 1,
    "extractall": 0,
    "TarWriter": 0,
}
# Functions that write the path they are given, only ever called with a temporary of the helpers.
GIVEN_A_TEMPORARY = {
    "pipelines/ann.py:save": "Ann.save(path): update_graph calls it inside atomic_file",
    "data/shards.py:_write_shard": "one shard into make_shards' atomic_folder",
}
HELPERS = ("atomic_file", "atomic_folder")
# Where a path may be written directly: a temporary of the helpers (bound by ``with atomic_*(...) as NAME`` in
# the same function, or handed to a function as its ``tmp`` parameter), or a buffer in memory.
IN_MEMORY = ("BytesIO", "StringIO")


def _root(node: ast.AST) -> str | None:
    """The variable a path expression starts from: ``tmp`` of ``str(tmp / "x")``, ``os.path.join(tmp, n)``."""
    while True:
        if isinstance(node, ast.Name):
            return node.id
        if isinstance(node, ast.BinOp):
            node = node.left
        elif isinstance(node, ast.Call) and node.args:
            node = node.args[0]
        elif isinstance(node, ast.Attribute):
            node = node.value
        elif isinstance(node, ast.Subscript):
            node = node.value
        else:
            return None


def _targets(call: ast.Call, name: str) -> list[ast.AST]:
    """The path arguments a write call writes to (none for ``str.replace`` and the like)."""
    method_of = call.func.value if isinstance(call.func, ast.Attribute) else None
    if name in ("replace", "rename"):  # os.replace(src, dst) or Path.replace(dst), not str.replace(old, new)
        if isinstance(method_of, ast.Name) and method_of.id == "os":
            return call.args[1:2]
        return call.args[:1] if method_of is not None and len(call.args) == 1 and not call.keywords else []
    at = WRITES[name]
    if at == -1:
        return [method_of] if method_of is not None else []
    return call.args[at : at + 1] + (call.args[1:2] if name == "save" else [])


def _direct_writes(path: Path) -> list[str]:
    """``file:line call`` of each write in ``path`` that is not into a helper's temporary or into memory."""
    tree = ast.parse(path.read_text())
    found = []
    for func in [n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef)]:
        allowed = {a.arg for a in func.args.args if a.arg == "tmp"}
        for node in ast.walk(func):
            if isinstance(node, ast.With):
                for item in node.items:
                    call = item.context_expr
                    name = getattr(getattr(call, "func", None), "attr", None) or getattr(
                        getattr(call, "func", None), "id", None
                    )
                    if isinstance(item.optional_vars, ast.Name) and name in (*HELPERS, *IN_MEMORY):
                        allowed.add(item.optional_vars.id)
            if isinstance(node, ast.Assign) and isinstance(node.value, ast.Call):
                name = getattr(node.value.func, "attr", None) or getattr(node.value.func, "id", None)
                if name in IN_MEMORY:
                    allowed |= {t.id for t in node.targets if isinstance(t, ast.Name)}
        for node in ast.walk(func):
            if not isinstance(node, ast.Call):
                continue
            name = getattr(node.func, "attr", None) or getattr(node.func, "id", None)
            if name == "open" and len(node.args) > 1:
                mode = node.args[1].value if isinstance(node.args[1], ast.Constant) else ""
                if set(str(mode)) & set("wax+"):
                    targets = [node.args[0]]
                else:
                    continue
            elif name in WRITES:
                targets = _targets(node, name)
            else:
                continue
            roots = {_root(t) for t in targets}
            given = f"{path.relative_to(PACKAGE)}:{func.name}" in GIVEN_A_TEMPORARY
            if targets and not roots & allowed and "files" not in roots and not given:
                found.append((node.lineno, f"{path.relative_to(PACKAGE)}:{node.lineno} {name}"))
    return [w for _, w in sorted(set(found))]


def test_every_file_freelabel_writes_goes_through_the_one_helper():
    """Run files, checkpoints, the index and its graph, features, classifiers, exports, shards, COCO files,
    leaderboards, reports, lists and CSVs: all written by freelabel/files.py or into its temporaries."""
    direct = [w for p in sorted(PACKAGE.rglob("*.py")) if p.name != "files.py" for w in _direct_writes(p)]
    assert direct == [], "write these through freelabel.files (atomic_file, atomic_folder, write_*):\n" + "\n".join(
        direct
    )


def test_the_source_check_sees_a_direct_write(tmp_path):
    (tmp_path / "bad.py").write_text(
        "def f(path, data, out):\n"
        "    path.write_text(data)\n"
        "    with open(out, 'w') as g:\n"
        "        g.write(data)\n"
        "    with atomic_file(out) as t:\n"
        "        torch.save(data, t)\n"
        "    torch.save(data, out)\n"
    )
    global PACKAGE
    package, PACKAGE = PACKAGE, tmp_path
    try:
        assert [w.split()[1] for w in _direct_writes(tmp_path / "bad.py")] == ["write_text", "open", "save"]
    finally:
        PACKAGE = package


# ------------------------------------------------------------------------------ killed at every stage
def _checkpoint(run: Path, v: int) -> None:
    rundir.save_checkpoint(run, 6, {"w": torch.full((300,), float(v))}, {"train": {"v": v}})


def _read_checkpoint(run: Path) -> int:
    ckpt = rundir.latest_checkpoint(run)
    assert ckpt is not None and ckpt.name == "step-00000006"
    weights, state = rundir.load_checkpoint(ckpt)
    assert torch.equal(weights["w"], torch.full((300,), float(state["train"]["v"])))
    return state["train"]["v"]


def _index(folder: Path, v: int) -> None:
    from freelabel.pipelines import search

    old = search.open_index(folder) if (folder / search.MANIFEST).exists() else None
    rows = [{"path": f"{i}.png", "label": None} for i in range(12 + v)]
    meta = {"model": "m", "source": "s", "dim": 4, "view": {"size": 8}, "classes": [], "rows": rows, "v": v}
    vectors = torch.nn.functional.normalize(torch.randn(len(rows), 4, generator=torch.Generator().manual_seed(v)))
    search._commit(folder, meta, vectors, old, appended=old is not None)


def _read_index(folder: Path) -> int:
    from freelabel.pipelines import ann, search

    idx = search.open_index(folder)
    graph = ann.graph_file(folder, idx.meta["build"])
    assert graph.is_file() and len(ann.Ann.load(graph)) == len(idx.rows)  # its own graph, whole
    return idx.meta["v"]


def _classifier(folder: Path, v: int) -> None:
    from freelabel.data.views import ViewConfig
    from freelabel.encoder import Encoder
    from freelabel.evaluate.classifier import Classifier, save_classifier

    backbone = torch.nn.Linear(4, 3)
    backbone.embed_dim = 3
    model = Encoder("tiny", backbone, ViewConfig(size=2), 1)
    save_classifier(Classifier(model, torch.nn.Linear(3, 2), ["a", "b"]), folder, {"v": v}, {"notes.txt": "x" * v})


def _read_classifier(folder: Path) -> int:
    v = json.loads((folder / "classifier.json").read_text())["v"]
    assert (folder / "notes.txt").read_text() == "x" * v and set(load_file(str(folder / "head.safetensors")))
    return v


def _shards(folder: Path, v: int) -> None:
    """Version 1: no shards yet (shards go into a new folder); version v: shards of 3 + v images."""
    import shutil

    from freelabel.data.shards import make_shards

    shutil.rmtree(folder, ignore_errors=True)
    if v > 1:
        images = folder.parent / f"images{v}"
        images.mkdir(parents=True, exist_ok=True)
        for i in range(3 + v):
            (images / f"{i}.png").write_bytes(_png(i))
        make_shards(str(images), folder, per_shard=2, workers=1)


def _read_shards(folder: Path) -> int:
    from freelabel.data.shards import ImageShards

    return len(ImageShards(str(folder), "all", 8)) - 3 if folder.exists() else 1


def _png(i: int) -> bytes:
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.new("L", (8, 8), i * 20).save(buf, format="PNG")
    return buf.getvalue()


def _config(run: Path, v: int) -> None:
    rundir.save_config(run, resolve(load_recipe("simclr-fashion-mnist"), {"seed": v}))


KINDS = {  # kind: (where, write version v, read the version there)
    "config": ("run", _config, lambda run: rundir.load_config(run).seed),
    "metrics": (
        "run",
        lambda run, v: rundir.update_metrics(run, "x", {"v": v}),
        lambda run: rundir.read_metrics(run)["x"]["v"],
    ),
    "backbone": (
        "run",
        lambda run, v: rundir.save_backbone(run, {"w": torch.full((500,), float(v))}),
        lambda run: int(load_file(str(run / rundir.BACKBONE))["w"].unique().item()),
    ),
    "artefact": (
        "run",
        lambda run, v: rundir.save_artefact(run, "picture.png", bytes([v]) * 3000),
        lambda run: set((run / "picture.png").read_bytes()).pop(),
    ),
    "checkpoint": ("run", _checkpoint, _read_checkpoint),
    "checkpoint-new-step": (
        "run",
        lambda run, v: rundir.save_checkpoint(run, 3 + v, {"w": torch.full((300,), float(v))}, {"v": v}, keep=1),
        lambda run: rundir.load_checkpoint(rundir.latest_checkpoint(run))[1]["v"],
    ),
    "index": ("index", _index, _read_index),
    "classifier": ("classifier", _classifier, _read_classifier),
    "shards": ("shards", _shards, _read_shards),
}

# The stages of a write: every step of freelabel/files.py that touches the disk, in order.
STEPS = ("_fsync", "_exchange")


def _stages(kill_at: int, torn: bool, counter: list[int], setattr=setattr) -> None:
    """Count the steps of writing (fsyncs, renames, swaps); at step ``kill_at`` SIGKILL this process before
    the step runs (``torn``: first cut the file it was about to sync to half its size)."""

    def step(name, real):
        def call(*args, **kwargs):
            counter[0] += 1
            if counter[0] == kill_at:
                target = Path(args[0])
                if torn and name == "_fsync" and target.is_file():
                    os.truncate(target, target.stat().st_size // 2)
                os.kill(os.getpid(), signal.SIGKILL)
            return real(*args, **kwargs)

        return call

    for name in STEPS:
        setattr(files, name, step(name, getattr(files, name)))
    setattr(os, "replace", step("replace", os.replace))


def _killed_child(write, where: Path, v: int, kill_at: int, torn: bool) -> int:
    pid = os.fork()
    if pid == 0:
        try:
            torch.set_num_threads(1)
            _stages(kill_at, torn, [0])
            write(where, v)
        except BaseException:
            traceback.print_exc()
        finally:
            os._exit(0)
    return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.rglob("*") if p.name.startswith((".", files.ASIDE)))


@pytest.mark.parametrize("kind", KINDS)
def test_a_writer_killed_at_any_stage_leaves_the_old_file_or_the_new_one(kind, tmp_path, monkeypatch):
    from freelabel.pipelines import ann

    monkeypatch.setattr(ann, "THRESHOLD", 8)  # an ANN graph for the index's dozen rows
    place, write, read = KINDS[kind]
    write(tmp_path / "count" / place, 1)
    counter = [0]
    with monkeypatch.context() as m:
        _stages(0, False, counter, m.setattr)
        write(tmp_path / "count" / place, 2)
    stages = counter[0]
    assert stages >= 3, f"{kind}: written in {stages} steps"
    for kill_at in range(1, stages + 1):
        for torn in (True, False) if kill_at == 1 else (False,):
            root = tmp_path / f"{kill_at}-{torn}"
            where = root / place
            write(where, 1)
            assert _killed_child(write, where, 2, kill_at, torn) == -signal.SIGKILL
            assert read(where) in (1, 2), f"{kind} killed at step {kill_at} of {stages}"
            write(where, 3)  # the next write tidies what the killed one left, and works
            assert read(where) == 3
            assert _leftovers(root) == [], (kind, kill_at)


def test_a_journal_keeps_every_whole_line_of_a_killed_writer(tmp_path):
    journal = files.Journal(tmp_path / "labels.jsonl")
    journal.append([{"i": 0}, {"i": 1}])
    pid = os.fork()
    if pid == 0:  # killed half-way through its write
        real = os.write
        os.write = lambda fd, data: (real(fd, bytes(data)[: len(data) // 2]), os.kill(os.getpid(), signal.SIGKILL))
        try:
            files.Journal(tmp_path / "labels.jsonl").append([{"i": 2, "text": "x" * 100}])
        finally:
            os._exit(0)
    assert os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) == -signal.SIGKILL
    assert not (tmp_path / "labels.jsonl").read_bytes().endswith(b"\n")  # torn
    again = files.Journal(tmp_path / "labels.jsonl")
    again.append([{"i": 3}])  # the torn line is cut before anything is appended
    assert again.read() == [{"i": 0}, {"i": 1}, {"i": 3}]


def test_a_failed_write_leaves_no_temporary_and_the_old_file(tmp_path):
    target = tmp_path / "a.json"
    files.write_json(target, {"v": 1})
    with pytest.raises(ZeroDivisionError), files.atomic_file(target) as tmp:
        tmp.write_text("half")
        raise ZeroDivisionError
    with pytest.raises(KeyboardInterrupt), files.atomic_folder(tmp_path / "folder") as tmp:
        (tmp / "x").write_text("x")
        raise KeyboardInterrupt
    assert json.loads(target.read_text()) == {"v": 1} and sorted(p.name for p in tmp_path.iterdir()) == ["a.json"]


def test_a_full_disk_is_one_line_whoever_writes(tmp_path, monkeypatch):
    from freelabel.pipelines.ann import Ann

    monkeypatch.setattr(files.shutil, "disk_usage", lambda p: type("U", (), {"free": 10})())
    with pytest.raises(DiskFullError, match="no space for big.bin .* it needs 1.0 kB, 10 bytes are free"):
        files.write_bytes(tmp_path / "big.bin", bytes(1000))
    # a library that says it its own way (faiss, torch.save: a bare RuntimeError) once the disk is full
    with (
        pytest.raises(DiskFullError, match="no space left in .* for graph.faiss"),
        files.atomic_file(tmp_path / "graph.faiss") as tmp,
    ):
        Ann(4).save(tmp / "no-such-folder")
    assert list(tmp_path.iterdir()) == []
