"""The one job runner: at most one job at a time, its status readable by the tab, the REST API and tests.

State lives at module level (`runner()`), in a normally imported package, so the WebUI's "Reload UI"
(which re-executes scripts/ but keeps sys.modules) finds a running job's status. Buttons only set
requests on the job's TrainControl; the training loop honours them at step boundaries.
"""
from __future__ import annotations

import contextlib
import logging
import threading
import time
import traceback
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

from ..errors import DreamboothError
from ..store import check_model_name
from ..train.control import TrainControl, TrainStatus

log = logging.getLogger("dreambooth")
MAX_NOTES = 500
REPEAT_WINDOW_S = 5.0  # the same line again within this time is one event reported twice (job and button)
FINAL_STATES = ("done", "canceled", "failed")


@dataclass
class Job:
    kind: str  # train | create | checkpoint | samples
    model_name: str
    control: TrainControl
    thread: threading.Thread | None = None
    result: Any = None
    error: str | None = None
    finished: threading.Event = field(default_factory=threading.Event)


class JobRunner:
    def __init__(self):
        self._lock = threading.Lock()
        self._job: Job | None = None  # running job
        self._last: Job | None = None  # most recent job (running or finished) for status
        self._notes: list[str] = []  # the unified log: UI messages and every job's log lines
        self._last_note: tuple[str, float] = ("", 0.0)

    # log ------------------------------------------------------------------------------------------
    def note(self, message: str) -> None:
        """Add a line to the log. A job's own line and the button's answer can be the same words (Cancel,
        Generate Samples during training): the second is dropped, so no line appears twice."""
        now = time.monotonic()
        line = f"{time.strftime('%H:%M:%S')} {message}"
        with self._lock:
            if self._last_note[0] == message and now - self._last_note[1] < REPEAT_WINDOW_S:
                return
            self._last_note = (message, now)
            self._notes.append(line)
            del self._notes[:-MAX_NOTES]

    def log_lines(self) -> list[str]:
        with self._lock:
            return list(self._notes)

    # queries --------------------------------------------------------------------------------------
    def current(self) -> Job | None:
        with self._lock:
            return self._job

    def busy(self) -> bool:
        return self.current() is not None

    def status(self) -> TrainStatus:
        with self._lock:
            job = self._job or self._last
        if job is None:
            return TrainStatus()
        return job.control.snapshot()

    def last_kind(self) -> str | None:
        with self._lock:
            job = self._job or self._last
        return None if job is None else job.kind

    def status_dict(self) -> dict:
        from dataclasses import asdict

        with self._lock:
            job = self._job or self._last
        data = asdict(self.status())
        data["job"] = None if job is None else {"kind": job.kind, "model_name": job.model_name,
                                                "running": not job.finished.is_set(), "error": job.error}
        return data

    # jobs -----------------------------------------------------------------------------------------
    def _claim(self, kind: str, model_name: str) -> Job:
        # a name that is no model name is refused before it becomes the job's: the status poll reads it back
        model_name = check_model_name(model_name)
        with self._lock:
            if self._job is not None:
                running = self._job
                raise DreamboothError(
                    f"a job is already running ({running.kind} of '{running.model_name}'): "
                    "wait for it to finish or press Cancel", field="job")
            job = Job(kind, model_name, TrainControl(on_log=self.note))
            self._job = job
            self._last = job
            return job

    def _release(self, job: Job) -> None:
        with self._lock:
            if self._job is job:
                self._job = None
        job.finished.set()

    def start_training(self, model_name: str, cfg, resume: bool = False,
                       train_fn: Callable | None = None) -> Job:
        """Start training in a thread; refused (DreamboothError) while any job runs."""
        job = self._claim("train", model_name)
        job.control.update(state="preparing", model_name=model_name, started_at=time.time(),
                           total_epochs=getattr(cfg, "num_train_epochs", 0))
        job.control.log(f"training '{model_name}' started")

        def body():
            from ..platform import host
            from . import operations

            fn = train_fn or operations.train_model
            control = job.control
            try:
                # the lock first: the WebUI's model is freed only once no generation is using it
                def waiting(message: str) -> None:  # say what training waits for, not "preparing"
                    control.update(state="waiting", message=message)
                    control.log(message)

                with host.generation_lock(on_wait=waiting), host.vram_released():
                    control.update(state="preparing", message="")
                    job.result = fn(model_name, cfg, control, resume=resume)
                state = control.snapshot().state
                if state not in FINAL_STATES:
                    state = "canceled" if control.cancel_requested.is_set() else "done"
                    control.update(state=state)
                control.log(f"training '{model_name}' {state}")
            except DreamboothError as error:
                job.error = str(error)
                control.update(state="failed", message=str(error))
                control.log(f"error: {error}")
            except Exception as error:  # a bug or an environment failure: keep the tab alive, say what
                job.error = f"{type(error).__name__}: {error}"
                log.error("dreambooth training failed\n%s", traceback.format_exc())
                control.update(state="failed", message=job.error)
                control.log(f"training failed: {job.error} (details in the console)")
            finally:
                control.update(finished_at=time.time())  # each export refreshed the WebUI's list
                self._release(job)

        job.thread = threading.Thread(target=body, name=f"dreambooth-train-{model_name}", daemon=True)
        job.thread.start()
        return job

    @contextlib.contextmanager
    def exclusive(self, kind: str, model_name: str) -> Iterator[Job]:
        """Run a short job (create, checkpoint, samples) in the caller's thread, refused while busy."""
        job = self._claim(kind, model_name)
        job.control.update(state="running", model_name=job.model_name, started_at=time.time())
        try:
            yield job
            if job.control.snapshot().state not in FINAL_STATES:
                job.control.update(state="done")
        except BaseException as error:
            job.error = str(error)
            job.control.update(state="failed", message=str(error))
            raise
        finally:
            job.control.update(finished_at=time.time())
            self._release(job)

    # requests -------------------------------------------------------------------------------------
    def cancel(self) -> str:
        job = self.current()
        if job is None:
            return "nothing to cancel: no job is running"
        if job.kind != "train":
            return f"{job.kind} cannot be canceled; it finishes shortly"
        job.control.request_cancel()
        job.control.log("cancel requested: training stops after the current step")
        return "cancel requested: training stops after the current step"

    def request_samples(self) -> str | None:
        """During training: ask the loop for samples at the next step. None when not training."""
        job = self.current()
        if job is None or job.kind != "train":
            return None
        job.control.request_samples()
        job.control.log("samples requested: generated at the next step")
        return "samples requested: they appear in the gallery after the next step"

    def request_save(self, half: bool | None = None, subdir: bool | None = None) -> str | None:
        """During training: a checkpoint at the next step (Half / subdir as given; None: the saved params)."""
        job = self.current()
        if job is None or job.kind != "train":
            return None
        job.control.request_save(half, subdir)
        what = "a half-precision checkpoint" if half else "a checkpoint"
        message = f"save requested: {what} is written at the next step"
        job.control.log(message)
        return message

    def wait(self, timeout: float | None = None) -> bool:
        job = self.current()
        return True if job is None else job.finished.wait(timeout)


_RUNNER = JobRunner()


def runner() -> JobRunner:
    return _RUNNER
