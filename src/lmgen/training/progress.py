"""What a training run shows as it goes, from the records it writes to metrics.jsonl: on a
terminal, a progress bar; anywhere else (a pipe, a file, a CI log), one plain line per log
interval, never a carriage return. Resumes and evaluations (with their sample) are lines in
both cases."""

from __future__ import annotations

import sys
from typing import TextIO


class TrainingReport:
    """An `on_event` listener for `train()`. `steps`: show the progress of the steps (the bar,
    or the line per log interval); resumes and evaluations are shown either way. `bar`: None
    chooses one when both `out` and stderr (where the bar goes) are terminals."""

    def __init__(
        self,
        max_steps: int,
        sample_prompt: str = "",
        out: TextIO | None = None,
        steps: bool = True,
        bar: bool | None = None,
    ):
        self.max_steps, self.sample_prompt = max_steps, sample_prompt
        self.out = out if out is not None else sys.stdout
        self.steps = steps
        if bar is None:
            bar = steps and _is_terminal(self.out) and _is_terminal(sys.stderr)
        self.use_bar, self.bar = bar, None

    def __call__(self, record: dict) -> None:
        event = record.get("event")
        if event == "start":
            self._start(record)
        elif event == "train" and self.steps:
            self._progress(record)
        elif event == "eval":
            self._evaluation(record)
        elif event == "end":
            self.close()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None

    def _start(self, record: dict) -> None:
        if self.use_bar:
            from tqdm.auto import tqdm

            self.bar = tqdm(
                total=self.max_steps,
                initial=record["step"],
                unit="step",
                dynamic_ncols=True,
                desc="training",
            )
        if record.get("resumed_from"):
            self._say(f"resuming from {record['resumed_from']} (step {record['step']})")

    def _progress(self, r: dict) -> None:
        if self.bar is not None:
            postfix = {"loss": f"{r['loss']:.3f}", "tok_s": f"{r['tokens_per_s']:.0f}"}
            self.bar.set_postfix(postfix, refresh=False)
            self.bar.update(r["step"] - self.bar.n)
            return
        self._say(
            f"step {r['step']}/{self.max_steps}: loss {r['loss']:.4f}, lr {r['lr']:.2e}, "
            f"{r['tokens_per_s']:,.0f} tokens/s, {r['elapsed_s']:.0f} s"
        )

    def _evaluation(self, r: dict) -> None:
        self._say(
            f"step {r['step']}/{self.max_steps}: val loss {r['val_loss']:.4f}, "
            f"ppl {r['val_ppl']:.2f}, {r['val_bpb']:.4f} bits/byte"
        )
        if r.get("sample") is not None:
            lines = (self.sample_prompt + r["sample"]).splitlines() or [""]
            self._say("\n".join("  | " + line for line in lines))

    def _say(self, text: str) -> None:
        if self.bar is not None:
            self.bar.write(text, file=self.out)  # above the bar, not through it
        else:
            print(text, file=self.out, flush=True)


def _is_terminal(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # a replaced or closed stream
        return False
