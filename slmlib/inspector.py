"""An ipywidgets browser of failed tool calls: filter by model, group and error label, step through
an episode and see the prompt, the raw output, the parsed and the expected call, and the observation."""
from __future__ import annotations

import html

import ipywidgets as w
import pandas as pd

from slmlib import analysis

ALL = "(all)"


class FailureInspector:
    def __init__(self, preds: pd.DataFrame):
        self.failures = analysis.failures(preds)
        opts = lambda col: [ALL, *sorted(self.failures[col].unique())] if not self.failures.empty else [ALL]  # noqa: E731
        self.model = w.Dropdown(options=opts("model"), description="model")
        self.group = w.Dropdown(options=opts("group"), description="group")
        self.label = w.Dropdown(options=opts("label"), description="error")
        self.episode = w.Dropdown(options=[], description="task")
        self.step = w.IntSlider(min=0, max=0, description="step")
        self.view = w.HTML()
        for control in (self.model, self.group, self.label):
            control.observe(self._filter, names="value")
        self.episode.observe(self._pick, names="value")
        self.step.observe(self._show, names="value")
        self._filter()

    @property
    def widget(self) -> w.Widget:
        return w.VBox([w.HBox([self.model, self.group, self.label]), w.HBox([self.episode, self.step]), self.view])

    def filtered(self) -> pd.DataFrame:
        f = self.failures
        for control, col in ((self.model, "model"), (self.group, "group"), (self.label, "label")):
            if control.value != ALL and not f.empty:
                f = f[f[col] == control.value]
        return f

    def _filter(self, *_):
        f = self.filtered()
        self.episode.options = [(f"{r.model} · {r.id} · {r.label}", i) for i, r in f.iterrows()]
        if self.episode.options and self.episode.value is None:  # ipywidgets 8 leaves new options unchosen
            self.episode.value = self.episode.options[0][1]  # which shows it
        else:
            self._pick()

    def _pick(self, *_):
        if self.episode.value is None:
            self.step.max, self.view.value = 0, "<i>no failed episode matches these filters</i>"
            return
        row = self.failures.loc[self.episode.value]
        self.step.max = max(0, len(row["record"]["steps"]) - 1)
        self.step.value = self.step.max  # the last step is usually where it went wrong
        self._show()

    def _show(self, *_):
        if self.episode.value is None:
            return
        row = self.failures.loc[self.episode.value]
        v = analysis.step_view(row, self.step.value)
        cell = lambda title, text: (f"<div style='flex:1;min-width:0'><b>{title}</b><pre style='white-space:pre-wrap;"  # noqa: E731
                                    f"font-size:11px;max-height:300px;overflow:auto'>{html.escape(text)}</pre></div>")
        self.view.value = (f"<p><b>{html.escape(row['model'])}</b> · task <code>{html.escape(row['id'])}</code> · "
                           f"{html.escape(v['verdict'])}</p>"
                           f"<div style='display:flex;gap:8px'>{cell('prompt (end)', v['prompt'][-1500:])}{cell('raw output', v['raw'])}</div>"
                           f"<div style='display:flex;gap:8px'>{cell('parsed call', v['parsed'])}{cell('expected', v['expected'])}"
                           f"{cell('observation', v['observation'])}</div>"
                           + (f"<div>{cell('search tree (* = the chain judged)', v['search'])}</div>" if v["search"] else ""))
