"""The Colab notebooks in `notebooks/`: stored clean, consistent with the README, and runnable end to end.

`test_notebook_runs_in_smoke_mode` executes each notebook with nbclient in smoke mode (`UPETU_SMOKE=1`: a tiny
ConvNeXt built locally, the real data in `../shared`, tiny sizes, no network) and checks that every plot was
written as a PNG that is not blank. A failing cell fails the test, with the cell's traceback.
"""

from __future__ import annotations

import ast
import os
import re
import sys
import time
from pathlib import Path

import nbformat
import numpy as np
import PIL.Image
import pytest
from conftest import REPO_ROOT, SHARED

NOTEBOOKS_DIR = REPO_ROOT / "notebooks"
#: Each notebook and the plots it writes into `$UPETU_NOTEBOOK_OUT`.
NOTEBOOKS = {
    "01_scene_classification.ipynb": ["confusion_matrix.png"],
    "02_semantic_segmentation.ipynb": ["segmentation_predictions.png"],
    "03_change_detection.ipynb": ["change_detection_predictions.png"],
    "04_adapters_from_the_hub.ipynb": ["adapter_predictions.png", "adapter_sizes.png"],
}
#: The install source: one parameter, the first statement of each notebook's first code cell, which the README
#: documents; the install command uses it and nothing else.
INSTALL_SOURCE = 'UPETU_HF_SOURCE = "git+https://github.com/upetu-hf/upetu-hf"'
INSTALL = '%pip install -q "{UPETU_HF_SOURCE}"'
#: What notebook 4 prints when its adapters cannot be reached and it trains two stand-ins (in smoke mode, always).
STAND_IN_LINE = "Training two small stand-in adapters"
COLAB_URL = "https://colab.research.google.com/github/upetu-hf/upetu-hf/blob/main/notebooks/{name}"
COLAB_BADGE = "https://colab.research.google.com/assets/colab-badge.svg"
MAX_NOTEBOOK_BYTES = 50_000
#: Wall-clock budget of one notebook in smoke mode: the four together must finish in under 10 minutes.
NOTEBOOK_BUDGET_S = 150
KERNEL_NAME = "upetu-notebooks"


def read(name: str) -> nbformat.NotebookNode:
    return nbformat.read(NOTEBOOKS_DIR / name, as_version=4)


def parameters_cell(nb: nbformat.NotebookNode) -> nbformat.NotebookNode:
    tagged = [c for c in nb.cells if "parameters" in c.get("metadata", {}).get("tags", [])]
    assert len(tagged) == 1, f"expected one cell tagged 'parameters', found {len(tagged)}"
    return tagged[0]


def hub_ids(nb: nbformat.NotebookNode) -> list[str]:
    """The string values of the `*_ID` parameters: the Hub ids of a full (non-smoke) run."""
    found = []
    for node in ast.parse(parameters_cell(nb).source).body:
        if isinstance(node, ast.Assign) and isinstance(node.value, ast.Constant):
            names = [t.id for t in node.targets if isinstance(t, ast.Name)]
            if any(n.endswith("_ID") for n in names) and isinstance(node.value.value, str):
                found.append(node.value.value)
    return found


# ---------------------------------------------------------------------------------------------- stored form
def test_the_four_notebooks_are_there():
    assert sorted(p.name for p in NOTEBOOKS_DIR.glob("*.ipynb")) == sorted(NOTEBOOKS)


@pytest.mark.parametrize("name", sorted(NOTEBOOKS))
def test_notebook_is_stored_without_outputs_or_blobs(name):
    path = NOTEBOOKS_DIR / name
    assert path.stat().st_size < MAX_NOTEBOOK_BYTES, f"{name} is {path.stat().st_size} bytes"
    nb = read(name)
    nbformat.validate(nb)
    for i, cell in enumerate(nb.cells):
        assert "attachments" not in cell, f"cell {i} embeds attachments"
        if cell.cell_type == "code":
            assert cell.outputs == [], f"cell {i} was committed with outputs"
            assert cell.execution_count is None, f"cell {i} was committed with an execution count"
    assert "widgets" not in nb.metadata
    assert "data:image" not in path.read_text(encoding="utf-8"), "an image is embedded in a markdown cell"


@pytest.mark.parametrize("name", sorted(NOTEBOOKS))
def test_notebook_has_badge_install_cell_and_parameters(name):
    nb = read(name)
    title = nb.cells[0]
    assert title.cell_type == "markdown" and title.source.startswith("# ")
    assert f"]({COLAB_URL.format(name=name)})" in title.source and COLAB_BADGE in title.source
    install = [c for c in nb.cells if c.cell_type == "code" and INSTALL in c.source]
    assert len(install) == 1, "one install cell with the install command"
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert install[0] is code[0], "the install cell is the first code cell"
    first = ast.parse(install[0].source.replace(INSTALL, "pass")).body[0]
    source = ast.get_source_segment(install[0].source, first)
    assert source == INSTALL_SOURCE, "the install source comes first"
    uses = [c for c in code if "UPETU_HF_SOURCE" in c.source]
    assert uses == install and install[0].source.count("UPETU_HF_SOURCE") == 2, "one parameter, used once"
    assert 'os.environ.get("UPETU_SMOKE") != "1"' in install[0].source, "the install is skipped in smoke mode"
    cell = parameters_cell(nb)
    assert nb.cells.index(cell) > nb.cells.index(install[0])
    assert "SMOKE" not in cell.source, "the parameters cell holds the full-run values only"
    tree = ast.parse(cell.source)
    assert all(isinstance(node, ast.Assign) for node in tree.body), "the parameters cell only assigns values"
    assert hub_ids(nb), "the Hub ids are parameters (names ending in _ID)"
    smoke = [
        c for c in nb.cells if c.cell_type == "code" and 'os.environ.get("UPETU_SMOKE") == "1"' in c.source
    ]
    assert len(smoke) == 1 and nb.cells.index(smoke[0]) == nb.cells.index(cell) + 2


def check_readme(readme: str) -> None:
    """The README documents the notebooks' install source, their Colab badges and every Hub id they use."""
    assert INSTALL_SOURCE in readme, "README lacks the notebooks' install source"
    for name in NOTEBOOKS:
        assert COLAB_URL.format(name=name) in readme, f"README lacks the Colab link of {name}"
        for hub_id in hub_ids(read(name)):
            assert re.search(rf"`{re.escape(hub_id)}`", readme), f"README lacks the Hub id {hub_id} of {name}"


def test_readme_documents_the_install_cell_and_the_hub_ids():
    check_readme((REPO_ROOT / "README.md").read_text(encoding="utf-8"))


def test_check_readme_fails_without_the_install_source():
    readme = (REPO_ROOT / "README.md").read_text(encoding="utf-8")
    with pytest.raises(AssertionError, match="install source"):
        check_readme(readme.replace(INSTALL_SOURCE, ""))


def test_notebook_4_labels_its_adapters_as_unpublished_and_falls_back():
    """The adapters of notebook 4 are not on the Hub yet: it says so, and its smoke cell does not train them (the
    fallback cell does, so the smoke run takes the path a Colab user takes while they are missing)."""
    nb = read("04_adapters_from_the_hub.ipynb")
    markdown = " ".join(c.source for c in nb.cells if c.cell_type == "markdown")
    assert "published by this project" not in markdown and "not published yet" in markdown
    assert "publish_adapters.sh" in markdown
    smoke = next(c for c in nb.cells if 'os.environ.get("UPETU_SMOKE") == "1"' in c.source)
    assert "train(" not in smoke.source
    assert sum(STAND_IN_LINE in c.source for c in nb.cells if c.cell_type == "code") == 1


# ---------------------------------------------------------------------------------------------- execution
@pytest.fixture(scope="module")
def kernel_manager_factory(tmp_path_factory):
    """Kernels run this interpreter (`sys.executable`), whatever `python` is first on PATH: the installed
    `python3` kernelspec of a venv launches plain `python`."""
    from ipykernel.kernelspec import write_kernel_spec
    from jupyter_client.kernelspec import KernelSpecManager
    from jupyter_client.manager import KernelManager

    kernels = tmp_path_factory.mktemp("kernels")
    write_kernel_spec(kernels / KERNEL_NAME)

    def make() -> KernelManager:
        return KernelManager(
            kernel_name=KERNEL_NAME, kernel_spec_manager=KernelSpecManager(kernel_dirs=[str(kernels)])
        )

    return make


def assert_not_blank(png: Path) -> None:
    with PIL.Image.open(png) as image:
        pixels = np.asarray(image.convert("RGB"), dtype=np.float32)
    assert min(pixels.shape[:2]) >= 100, f"{png.name} is only {pixels.shape[1]}x{pixels.shape[0]} pixels"
    assert pixels.std() > 5, f"{png.name} is blank (uniform colour)"
    non_white = (pixels < 250).any(axis=2).mean()
    assert non_white > 0.02, f"{png.name} is almost all white ({non_white:.1%} of the pixels are not)"


@pytest.mark.skipif(not SHARED.is_dir(), reason=f"real data folder {SHARED} is missing")
@pytest.mark.parametrize("name", sorted(NOTEBOOKS))
def test_notebook_runs_in_smoke_mode(name, tmp_path, kernel_manager_factory):
    from nbclient import NotebookClient

    out = tmp_path / "out"
    out.mkdir()
    env = dict(
        os.environ,
        UPETU_SMOKE="1",
        UPETU_SHARED=str(SHARED),
        UPETU_NOTEBOOK_OUT=str(out),
        HF_HUB_OFFLINE="1",
        HF_DATASETS_OFFLINE="1",
        HF_HOME=str(tmp_path / "hf-home"),  # nothing is read from or written to the user's caches
        TRANSFORMERS_VERBOSITY="error",
        TQDM_DISABLE="1",
        TOKENIZERS_PARALLELISM="false",
        # One thread per kernel: on a small, shared CPU, torch's default thread pool spends most of its time
        # waiting for cores (a tiny model's step takes seconds instead of milliseconds).
        OMP_NUM_THREADS="1",
        MKL_NUM_THREADS="1",
        MPLBACKEND="module://matplotlib_inline.backend_inline",  # Jupyter's and Colab's backend (renders with Agg)
    )
    nb = read(name)
    client = NotebookClient(
        nb,
        km=kernel_manager_factory(),
        timeout=NOTEBOOK_BUDGET_S,
        resources={"metadata": {"path": str(NOTEBOOKS_DIR)}},  # the kernel runs in notebooks/, as on Colab
    )
    start = time.perf_counter()
    client.execute(env=env, cleanup_kc=True)  # shut the kernel down afterwards (we own its manager)
    elapsed = time.perf_counter() - start
    assert elapsed < NOTEBOOK_BUDGET_S, (
        f"{name} took {elapsed:.0f} s in smoke mode (budget {NOTEBOOK_BUDGET_S} s)"
    )
    for png in NOTEBOOKS[name]:
        assert (out / png).is_file(), f"{name} did not write {png}"
        assert_not_blank(out / png)
    shown = [
        o for c in nb.cells if c.cell_type == "code" for o in c.outputs if "image/png" in o.get("data", {})
    ]
    assert len(shown) == len(NOTEBOOKS[name]), "every plot is also shown in the notebook"
    # notebook 4 offline: its adapter ids cannot be reached, so it says so and trains two stand-ins
    if name == "04_adapters_from_the_hub.ipynb":
        printed = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.outputs)
        assert STAND_IN_LINE in printed
    print(f"{name}: {elapsed:.1f} s", file=sys.stderr)
