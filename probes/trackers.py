"""The built-in sinks: TensorBoard, Weights & Biases and MLflow (what each spec string of
:mod:`phasescope.probes.sinks` becomes). Each tracker's package is imported when its sink first writes,
on the sinks' thread; building one only checks that the package is there.

MLflow's file store: MLflow 3 refuses it unless ``MLFLOW_ALLOW_FILE_STORE=true`` (the backend is in
"maintenance mode", no data-safety reason). Naming one (``mlflow:file:./mlruns``, or plain ``mlflow``
with no ``MLFLOW_TRACKING_URI``) is taken as opting in: the variable is set if unset, with a one-time
note; set it to false to refuse. Database URIs need SQLAlchemy and Alembic, i.e. the full ``mlflow``
package rather than the ``mlflow-skinny`` of phasescope's extra.
"""

from __future__ import annotations

import importlib.util
import os
import re
import time
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from phasescope.errors import PhasescopeError

KINDS = ("tensorboard", "wandb", "mlflow")
_MLFLOW_TAG_MAX = 8000  # mlflow.utils.validation.MAX_TAG_VAL_LENGTH
_MLFLOW_BATCH = 1000  # mlflow.utils.validation.MAX_METRICS_PER_BATCH
_MLFLOW_BAD = re.compile(r"[^/\w.\- ]")  # outside MLflow's portable metric/tag name characters
_NOTED_FILE_STORE = False


class TrackerSink:
    """Base of the built-in sinks: the tracker is opened at the first write (on the sinks thread), and
    an opening that failed is not retried (each later write fails at once, counted)."""

    kind = ""

    def __init__(self, handle: Any = None):
        self.owned = handle is None  # a handle given by the user is theirs to close
        self._handle = handle
        self._open_error: str | None = None

    def _open(self) -> Any:
        raise NotImplementedError

    def _opened(self) -> Any:
        if self._handle is None:
            if self._open_error is not None:
                raise RuntimeError(f"the {self.kind} sink could not be opened: {self._open_error}")
            try:
                self._handle = self._open()
            except Exception as exc:
                self._open_error = f"{type(exc).__name__}: {exc}"[:300]
                raise
        return self._handle

    def _finish(self, handle: Any, status: str) -> None:
        raise NotImplementedError

    def close(self, status: str = "finished") -> None:
        """Flush; end the tracker's run (``status``: the run's finished/interrupted/failed) if phasescope opened it."""
        handle, self._handle = self._handle, None
        if handle is not None:
            self._finish(handle, status)

    def describe(self) -> dict:
        return {"kind": self.kind}


class TensorBoardSink(TrackerSink):
    """Scalars with ``add_scalar`` (TensorBoard keeps float32), text with ``add_text``."""

    kind = "tensorboard"

    def __init__(self, log_dir: str | os.PathLike | None = None, *, writer: Any = None):
        super().__init__(writer)
        self.log_dir = os.path.abspath(log_dir) if log_dir is not None else getattr(writer, "log_dir", None)

    def _open(self) -> Any:
        from torch.utils.tensorboard import SummaryWriter

        return SummaryWriter(log_dir=self.log_dir, flush_secs=5)  # live: at most 5 s behind the store

    def log_scalars(self, step: int, values: Mapping[str, float]) -> None:
        w = self._opened()
        for tag, value in values.items():
            w.add_scalar(tag, value, global_step=step)

    def log_text(self, step: int, tag: str, text: str) -> None:
        self._opened().add_text(tag, text, global_step=step)

    def _finish(self, writer: Any, status: str) -> None:
        writer.flush()
        if self.owned:
            writer.close()

    def describe(self) -> dict:
        return {"kind": self.kind, "log_dir": self.log_dir}


class WandbSink(TrackerSink):
    """One W&B run; ``run.log(values, step=step)``, text events as string values of the same step.

    A run the user passes in keeps its own step counter, which W&B lets only grow: a value logged at an
    earlier ``step=`` is dropped with a console warning and no error, and phasescope's sinks thread runs
    behind the user's own logging. There phasescope's values go under ``phasescope/`` with the training
    step as a metric of their own (``phasescope/step``, their x axis through ``define_metric``)."""

    kind = "wandb"
    STEP = "phasescope/step"

    def __init__(
        self,
        project: str = "phasescope",
        dir: str | os.PathLike | None = None,
        name: str | None = None,
        *,
        run: Any = None,
        config: dict | None = None,
    ):
        super().__init__(run)
        self.project, self.name, self.config = project, name, dict(config or {})
        self.dir = os.path.abspath(dir) if dir is not None else None
        if run is None:
            self.mode, self.where = os.environ.get("WANDB_MODE") or "offline", {}
        else:  # the user's run: its own mode; phasescope logs into it at its own step numbers
            self.mode, self.where = getattr(run.settings, "mode", None), {"run_id": run.id}

    def _open(self) -> Any:
        import wandb

        if self.dir is not None:
            os.makedirs(self.dir, exist_ok=True)
        # Nothing that reaches for a network or the console: system stats (they probe cloud metadata
        # URLs), machine info, git, code saving, stdout capture.
        settings = wandb.Settings(
            console="off",
            silent=True,
            x_disable_stats=True,
            x_disable_machine_info=True,
            disable_git=True,
            save_code=False,
        )
        run = wandb.init(
            project=self.project,
            name=self.name,
            dir=self.dir,
            mode=self.mode,
            config=self.config,
            settings=settings,
            reinit="create_new",
        )
        self.where = {"run_id": run.id, "sync_dir": os.path.abspath(run.settings.sync_dir)}
        return run

    def log_scalars(self, step: int, values: Mapping[str, Any]) -> None:
        run = self._opened()
        if self.owned:
            run.log(dict(values), step=step)
            return
        if not getattr(self, "_defined", False):
            run.define_metric(self.STEP)
            run.define_metric("phasescope/*", step_metric=self.STEP)
            self._defined = True
        run.log({self.STEP: step, **{f"phasescope/{k}": v for k, v in values.items()}})

    def log_text(self, step: int, tag: str, text: str) -> None:
        self.log_scalars(step, {tag: text})

    def _finish(self, run: Any, status: str) -> None:
        if self.owned:
            run.finish(exit_code=0 if status == "finished" else 1)

    def describe(self) -> dict:
        return {"kind": self.kind, "project": self.project, "mode": self.mode, **self.where}


class MlflowSink(TrackerSink):
    """One MLflow run through ``MlflowClient``: ``log_batch`` per step, text events as run tags (MLflow
    metric and tag names keep ``/ _ . - space`` and letters/digits; other characters become ``_``)."""

    kind = "mlflow"

    def __init__(
        self, tracking_uri: str, name: str | None = None, experiment: str | None = None, tags: dict | None = None
    ):
        super().__init__()
        self.tracking_uri, self.name = tracking_uri, name
        self.experiment = experiment or os.environ.get("MLFLOW_EXPERIMENT_NAME") or "phasescope"
        self.tags = dict(tags or {})
        self.run_id: str | None = None

    def _open(self) -> Any:
        if _is_file_store(self.tracking_uri):
            _allow_file_store()
        from mlflow.tracking import MlflowClient

        client = MlflowClient(tracking_uri=self.tracking_uri)
        exp = client.get_experiment_by_name(self.experiment)
        exp_id = exp.experiment_id if exp is not None else client.create_experiment(self.experiment)
        self.run_id = client.create_run(exp_id, run_name=self.name, tags=self.tags).info.run_id
        return client

    def log_scalars(self, step: int, values: Mapping[str, float]) -> None:
        from mlflow.entities import Metric

        client = self._opened()
        now = int(time.time() * 1000)
        metrics = [Metric(_mlflow_name(k), v, now, step) for k, v in values.items()]
        for i in range(0, len(metrics), _MLFLOW_BATCH):
            client.log_batch(self.run_id, metrics=metrics[i : i + _MLFLOW_BATCH])

    def log_text(self, step: int, tag: str, text: str) -> None:
        if len(text) > _MLFLOW_TAG_MAX:
            text = text[: _MLFLOW_TAG_MAX - 1] + "…"
        self._opened().set_tag(self.run_id, _mlflow_name(tag), text)

    def _finish(self, client: Any, status: str) -> None:
        client.set_terminated(self.run_id, {"finished": "FINISHED", "interrupted": "KILLED"}.get(status, "FAILED"))

    def describe(self) -> dict:
        return {
            "kind": self.kind,
            "tracking_uri": self.tracking_uri,
            "experiment": self.experiment,
            "run_id": self.run_id,
        }


def _mlflow_name(tag: str) -> str:
    return _MLFLOW_BAD.sub("_", tag)


def _is_file_store(uri: str) -> bool:
    scheme = uri.split(":", 1)[0].lower() if re.match(r"^[A-Za-z][\w+.-]+:", uri) else ""
    return scheme in ("", "file")


def _allow_file_store() -> None:
    """Opt in to MLflow's file store (the user named one): set MLFLOW_ALLOW_FILE_STORE if unset, say so once."""
    global _NOTED_FILE_STORE
    if "MLFLOW_ALLOW_FILE_STORE" in os.environ:
        return
    os.environ["MLFLOW_ALLOW_FILE_STORE"] = "true"
    if not _NOTED_FILE_STORE:
        _NOTED_FILE_STORE = True
        warnings.warn(
            "phasescope: the mlflow sink writes a local file store, which MLflow 3 keeps in maintenance "
            "mode; MLFLOW_ALLOW_FILE_STORE=true was set for it (set it to false to refuse, or name a "
            "database URI such as mlflow:sqlite:///mlflow.db)",
            UserWarning,
            stacklevel=2,
        )


# ---------------------------------------------------------------------------------- specs
def _available(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # a parent that fails to import, or sys.modules[name] = None
        return False


def _need(kind: str, *modules: str) -> None:
    """Refuse a sink whose package is missing, naming phasescope's extra (each extra is named after its sink)."""
    missing = [m for m in modules if not _available(m)]
    if missing:
        raise PhasescopeError(f"the {kind} sink needs the {missing[0]} package: pip install 'phasescope[{kind}]'")


def _run_place(store: Any) -> tuple[Path, str]:
    """(folder beside which trackers write by default, run name) of a store path or URL."""
    if store is None:
        return Path("."), "phasescope"
    text = os.fspath(store) if isinstance(store, os.PathLike) else str(store)
    name = text.rstrip("/").rsplit("/", 1)[-1] or "phasescope"
    name = name[: -len(".zarr")] if name.endswith(".zarr") and len(name) > 5 else name
    base = Path(".") if "://" in text else Path(text).parent
    return base, name


def _check_mlflow_uri(uri: str) -> None:
    if _is_file_store(uri):
        if os.environ.get("MLFLOW_ALLOW_FILE_STORE", "").strip().lower() in ("false", "0"):
            raise PhasescopeError(
                f"the mlflow sink's tracking URI {uri!r} is a file store and "
                "MLFLOW_ALLOW_FILE_STORE is false; unset it or name a server or database URI"
            )
    elif uri.split(":", 1)[0].lower().split("+")[0] in ("sqlite", "postgresql", "mysql", "mssql") and not (
        _available("sqlalchemy") and _available("alembic")
    ):
        raise PhasescopeError(
            f"the mlflow tracking URI {uri!r} is a database, which needs the full MLflow "
            "package: pip install mlflow (or name a file store, mlflow:file:./mlruns)"
        )


def tracker_sink(kind: str, arg: str, store: Any) -> TrackerSink:
    """The built-in sink ``kind`` (one of KINDS) for spec ``"kind:arg"`` of the run at ``store``."""
    base, name = _run_place(store)
    if kind == "tensorboard":
        _need(kind, "tensorboard", "torch")
        return TensorBoardSink(arg or base / "tensorboard" / name)
    if kind == "wandb":
        _need(kind, "wandb")
        return WandbSink(
            project=arg or "phasescope",
            dir=os.environ.get("WANDB_DIR") or base,
            name=name,
            config={"phasescope_store": str(store)},
        )
    _need(kind, "mlflow")
    uri = arg or os.environ.get("MLFLOW_TRACKING_URI") or (base / "mlruns").resolve().as_uri()
    _check_mlflow_uri(uri)
    return MlflowSink(uri, name=name, tags={"phasescope.store": str(store)})


def adopt(obj: Any) -> TrackerSink | None:
    """A user's own ``SummaryWriter`` or ``wandb`` run as a sink (theirs to close), else None."""
    module = type(obj).__module__
    if module.startswith("torch.utils.tensorboard") and callable(getattr(obj, "add_scalar", None)):
        return TensorBoardSink(writer=obj)
    if module.startswith("wandb") and callable(getattr(obj, "log", None)) and callable(getattr(obj, "finish", None)):
        return WandbSink(project=getattr(obj, "project", None), run=obj)
    return None
