"""Meta-commentary and assistant chatter anywhere in a document, as datatrove steps.

A teacher talks about its task ("Here's a rewritten version of the original text", "I've
reformatted the article", a leaked "Rewrite the source ...") or to its user ("I hope this helps",
"Feel free to ask"). A hit in a short opening or closing line is a removable preamble or sign-off:
the line is cut and recorded in `meta.extra.stripped`; a hit anywhere else, or a document that is
nothing but such lines, rejects the document with the step's name as reason and the matched text.
"""

from __future__ import annotations

import json
import re

from factory.curate.filters import Step, _extra
from factory.curate.io import reject


def _lines(text: str) -> list[str]:
    return text.split("\n")


class CommentaryFilter(Step):
    """Reject or strip text matching `patterns` (case-insensitive regexes, `^` a line start).

    A line of at most `edge_words` words at the start or end of the document that matches is cut
    (with blank lines next to it) when `strip` is on and at least `min_words_left` words remain.
    """

    name = reason = "commentary"

    def __init__(self, reason: str, patterns: list[str], strip: bool = True, edge_words: int = 40,
                 min_words_left: int = 20, exclusion_writer=None):
        super().__init__(exclusion_writer)
        self.name = self.reason = reason
        self.patterns = list(patterns)
        self.strip, self.edge_words, self.min_words_left = strip, edge_words, min_words_left
        self._rx = None

    @property
    def rx(self) -> re.Pattern:
        if self._rx is None:
            self._rx = re.compile("|".join(f"(?:{p})" for p in self.patterns), re.IGNORECASE | re.MULTILINE)
        return self._rx

    def __getstate__(self):
        return {**self.__dict__, "_rx": None}

    def _edge(self, line: str) -> bool:
        return bool(self.rx.search(line)) and len(line.split()) <= self.edge_words

    def split(self, text: str) -> tuple[list[str], str, list[str]]:
        """(stripped opening lines, the body, stripped closing lines); nothing stripped when off."""
        lines = _lines(text)
        head: list[str] = []
        tail: list[str] = []
        if self.strip:
            i, j = 0, len(lines)
            while i < j and (not lines[i].strip() or self._edge(lines[i])):
                if lines[i].strip():
                    head.append(lines[i].strip())
                i += 1
            while j > i and (not lines[j - 1].strip() or self._edge(lines[j - 1])):
                if lines[j - 1].strip():
                    tail.insert(0, lines[j - 1].strip())
                j -= 1
            lines = lines[i:j]
        return head, "\n".join(lines).strip(), tail

    def filter(self, doc):
        if not self.patterns or not self.rx.search(doc.text):
            return True
        head, body, tail = self.split(doc.text)
        m = self.rx.search(body)
        if m:
            return reject(doc, self.reason, m.group(0)[:80])
        if len(body.split()) < self.min_words_left:
            hit = self.rx.search(doc.text).group(0)[:80]
            return reject(doc, self.reason, f"nothing left after stripping: {hit}")
        doc.text = body
        record(doc, self.reason, head, tail)
        return True


def record(doc, step: str, head: list[str], tail: list[str]) -> None:
    """Note what a step cut from the document in `meta.extra.stripped`."""
    cut = list(_extra(doc).get("stripped") or [])
    cut += [{"step": step, "where": "start", "text": t} for t in head]
    cut += [{"step": step, "where": "end", "text": t} for t in tail]
    record_extra(doc, stripped=cut)


def record_extra(doc, **values) -> None:
    """Set keys of a document's `meta.extra` (kept as a JSON string, as rows store it)."""
    meta = doc.metadata.get("meta")
    if meta is None:
        meta = doc.metadata["meta"] = {}
    meta["extra"] = json.dumps({**_extra(doc), **values}, sort_keys=True)
