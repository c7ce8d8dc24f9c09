"""Work in child Python processes (the sweep's parallel PPO runs, a pipeline stage run beside another).

The parent starts `python -m MODULE ARGS...` with the child's output going to a log file; the child's
entry point runs its work through `child_main`, which turns bad input into one line of the log and
exit code 2; `Child.finish` then raises the same `InputError` in the parent, and any other failure as
a RuntimeError with the end of the log.

    child = Child.start("rewardlab.rl.sweep", [config_json, str(out)], out.with_suffix(".log"))
    ...
    child.finish("the PPO run in OUT")   # waits; raises if the child failed
"""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Callable, Sequence

from rewardlab.errors import InputError

INPUT_ERROR = "rewardlab input error: "  # a child's last log line when it refuses its input (then JSON)


@dataclass
class Child:
    """A running `python -m MODULE ARGS...` whose stdout and stderr go to `log`."""

    proc: subprocess.Popen
    log: Path
    _log_file: IO

    @classmethod
    def start(cls, module: str, args: Sequence[str], log: Path) -> "Child":
        log_file = log.open("w")
        proc = subprocess.Popen([sys.executable, "-m", module, *args], stdout=log_file, stderr=subprocess.STDOUT)
        return cls(proc, log, log_file)

    def running(self) -> bool:
        return self.proc.poll() is None

    def finish(self, what: str) -> None:
        """Wait for the child; raise its InputError again here, or a RuntimeError naming `what` with the end of
        its log when it failed otherwise."""
        self.proc.wait()
        self._log_file.close()
        text = self.log.read_text(errors="replace")
        if self.proc.returncode == 2 and INPUT_ERROR in text:
            raise InputError(**json.loads(text.rsplit(INPUT_ERROR, 1)[1].splitlines()[0]))
        if self.proc.returncode:
            raise RuntimeError(f"{what} failed (exit code {self.proc.returncode}); the end of its log "
                               f"({self.log}):\n{text[-2000:]}")

    def kill(self) -> None:
        """Stop the child (the parent is failing or interrupted)."""
        self.proc.kill()
        self.proc.wait()
        self._log_file.close()


def child_main(work: Callable[[], object]) -> None:
    """A child's entry point: run `work`; bad input becomes INPUT_ERROR + JSON on stdout and exit code 2."""
    try:
        work()
    except InputError as e:
        print(INPUT_ERROR + json.dumps({"what": e.what, "where": e.where, "fix": e.fix}), flush=True)
        sys.exit(2)
