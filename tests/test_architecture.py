"""The house rules of docs/ARCHITECTURE.md, enforced: who may import whom, and what ships.

Imports are read from the source with ``ast`` (function-level imports included, since a lazy
import is still a dependency), relative imports resolved to ``nearwatch.*`` names.
"""

from __future__ import annotations

import ast
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = {"detector": "nearwatch.detector", "worker": "nearwatch.worker",
            "scheduler": "nearwatch.scheduler", "nearwatch": "nearwatch"}
MAX_LINES = 320  # "near or below 300"


def _module_name(path: Path) -> str:
    relative = path.relative_to(ROOT).with_suffix("")
    parts = [PACKAGES[relative.parts[0]].removesuffix(".__init__"), *relative.parts[1:]]
    name = ".".join(parts)
    return name.removesuffix(".__init__")


def _sources() -> list[Path]:
    return sorted(p for folder in PACKAGES for p in (ROOT / folder).rglob("*.py"))


def _imports(path: Path) -> set[str]:
    """Absolute names of every module imported anywhere in ``path``."""
    module = _module_name(path)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            found.add(target)
            found.update(f"{target}.{alias.name}" for alias in node.names)
    return found


def _violations(rule: str, allowed_from: str, forbidden: tuple[str, ...],
                exempt: tuple[str, ...] = ()) -> list[str]:
    bad = []
    for path in _sources():
        module = _module_name(path)
        if not module.startswith(allowed_from) or module.startswith(exempt):
            continue
        for name in _imports(path):
            if name.startswith(forbidden) and not name.startswith(exempt):
                bad.append(f"{module} imports {name} ({rule})")
    return bad


def test_only_the_embedding_package_imports_torch() -> None:
    assert _violations("torch only in embedding/", "nearwatch", ("torch",),
                       exempt=("nearwatch.detector.embedding",)) == []


def test_detector_is_a_pure_library() -> None:
    forbidden = ("nearwatch.worker", "nearwatch.scheduler", "celery", "kombu", "redis",
                 "prometheus_client", "click", "bench")
    assert _violations("detector/ is pure", "nearwatch.detector", forbidden) == []
    environment = [str(p.relative_to(ROOT)) for p in (ROOT / "detector").rglob("*.py")
                   if "os.environ" in p.read_text() or "getenv" in p.read_text()]
    assert environment == [], "only the edge (CLI, worker/settings.py) reads the environment"


def test_features_and_core_do_not_reach_into_embedding_or_store() -> None:
    # features/: records -> matrix, knows nothing of models. Core search and calibration
    # modules know nothing of how models are trained or stored.
    assert _violations("features/ stands alone", "nearwatch.detector.features",
                       ("nearwatch.detector.embedding", "nearwatch.detector.store",
                        "nearwatch.detector.detector")) == []
    for core in ("index", "references", "calibration"):
        assert _violations("core is model-agnostic", f"nearwatch.detector.{core}",
                           ("nearwatch.detector.embedding", "nearwatch.detector.store",
                            "nearwatch.detector.features")) == []
    assert _violations("embedding/ needs only errors", "nearwatch.detector.embedding",
                       ("nearwatch.detector.features", "nearwatch.detector.store",
                        "nearwatch.detector.index", "nearwatch.detector.detector")) == []


def test_worker_never_imports_the_scheduler_and_tasks_never_import_the_app() -> None:
    assert _violations("worker below scheduler", "nearwatch.worker",
                       ("nearwatch.scheduler",)) == []
    assert _violations("one-way app -> tasks", "nearwatch.worker.tasks",
                       ("nearwatch.worker.app",)) == []


def test_modules_stay_small() -> None:
    long = {str(p.relative_to(ROOT)): n for p in _sources()
            if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert long == {}


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
         str(ROOT), "-w", str(out)], check=True, capture_output=True)
    return next(out.glob("nearwatch-*.whl"))


def test_wheel_adds_one_import_name_and_ships_every_module(wheel: Path) -> None:
    names = zipfile.ZipFile(wheel).namelist()
    assert {name.split("/")[0] for name in names} == {"nearwatch", wheel.name.split("-")[0]
                                                      + "-" + wheel.name.split("-")[1]
                                                      + ".dist-info"}
    shipped = {name for name in names if name.endswith(".py")}
    expected = {_module_name(p).replace(".", "/") + ("/__init__.py" if p.name == "__init__.py"
                                                      else ".py") for p in _sources()}
    assert expected - shipped == set()
    assert not any(name.startswith(("nearwatch/bench", "bench/")) for name in names)


def test_old_top_level_names_are_not_importable(tmp_path: Path) -> None:
    for name in ("detector", "worker", "scheduler"):
        result = subprocess.run([sys.executable, "-c", f"import {name}"], cwd=tmp_path,
                                capture_output=True, text=True)
        assert result.returncode != 0 and "No module named" in result.stderr, name
    result = subprocess.run([sys.executable, "-c", "from nearwatch import Detector"],
                            cwd=tmp_path, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


TORCH_FREE = """
import sys, tempfile
class NoTorch:
    def find_spec(self, name, path=None, target=None):
        if name == "torch" or name.startswith("torch."):
            raise ImportError("torch is not installed here")
sys.meta_path.insert(0, NoTorch())
import numpy as np
from nearwatch import Detector
from nearwatch.detector.threads import configure_threads
configure_threads(1)
rows = np.random.default_rng(0).normal(size=(800, 4))
detector = Detector(encoder="identity", alpha=0.05).fit(rows)
folder = tempfile.mkdtemp() + "/model"
detector.save(folder)
restored = Detector.load(folder)
queries = np.vstack([np.zeros((1, 4)), np.full((1, 4), 9.0)])
assert (restored.score(queries) == detector.score(queries)).all()
assert restored.predict(queries).tolist() == [False, True]
try:
    Detector(encoder="metric").fit(rows)
except ImportError as exc:
    assert "torch" in str(exc)
else:
    raise AssertionError("a learned encoder cannot train without torch")
assert "torch" not in sys.modules
print("ok")
"""


def test_identity_detector_works_with_torch_unimportable(tmp_path: Path) -> None:
    result = subprocess.run([sys.executable, "-c", TORCH_FREE], cwd=tmp_path,
                            capture_output=True, text=True)
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr[-2000:]
