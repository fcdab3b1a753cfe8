"""OmniMedVQA's dermatology "Disease Diagnosis" questions: the paper's out-of-distribution set."""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path

import tensorflow_datasets as tfds

from skinr1_jax.data.builders.common import DatasetFormatError, DermBuilder, RawRecord

log = logging.getLogger(__name__)

QUESTION_TYPE = "Disease Diagnosis"
DERM_SUBSETS = ("Fitzpatrick 17k", "ISBI2016", "ISIC2018", "ISIC2019", "ISIC2020",
                "Monkeypox Skin Image 2022", "PAD-UFES-20")
_REQUIRED = ("question_type", "question", "gt_answer", "image_path")
_OPTIONS = ("option_A", "option_B", "option_C", "option_D", "option_E")


ANSWER_NOT_AN_OPTION = "gt_answer matches none of its options"


def _key(name: str) -> str:
    return re.sub(r"[^a-z0-9]", "", name.lower())


def _answer_key(text: str) -> str:
    """Case, inner whitespace and trailing punctuation do not make a different answer: the
    released files have answers such as "Melanoma." against the option "Melanoma"."""
    return " ".join(str(text).split()).rstrip(" .;,").casefold()


def match_option(answer: str, options: list[str]) -> str | None:
    """The option `answer` names (verbatim first, then normalised); None when none or several
    options match."""
    answer = str(answer).strip()
    if answer in options:
        return answer
    hits = [o for o in options if _answer_key(o) == _answer_key(answer)]
    return hits[0] if len(hits) == 1 else None


class OmnimedvqaDerm(DermBuilder):
    """Evaluation only: every question goes to `test`. Questions keep their own options and
    answer; the answer is also harmonised onto the taxonomy where it names a node (label ""
    and node -1 otherwise, e.g. "Normal"), and such answers are counted as unmapped. An
    answer that differs from its option only in case, spacing or a trailing period is read as
    that option; one that matches no option is skipped and counted under `excluded`."""

    name = "omnimedvqa_derm"
    LABEL_MAP = "omnimedvqa"
    KEEP_UNMAPPED = True
    EXTRA_FEATURES = {
        "question": tfds.features.Text(),
        "options": tfds.features.Sequence(tfds.features.Text()),
        "answer": tfds.features.Text(),
        "subset": tfds.features.Text(),
    }
    DESCRIPTION = ("OmniMedVQA (open-access part), dermatology sub-datasets, question_type "
                   "'Disease Diagnosis' (Hu et al., CVPR 2024).")
    HOMEPAGE = "https://github.com/OpenGVLab/Multi-Modality-Arena"
    CITATION = ("Hu Y, et al. OmniMedVQA: A New Large-Scale Comprehensive Evaluation Benchmark for "
                "Medical LVLM. CVPR 2024.")
    MANUAL_DOWNLOAD_INSTRUCTIONS = f"""
    Download OmniMedVQA (open-access part) and unpack it as manual_dir:
      QA_information/Open-access/<sub-dataset>.json   lists of question_id, question_type, question,
                                                       gt_answer, image_path, option_A..option_D
      Images/...                                       the paths named by image_path
    Used sub-datasets: {', '.join(DERM_SUBSETS)}; only question_type == "{QUESTION_TYPE}".
    """

    def __init__(self, *, subsets: tuple[str, ...] = DERM_SUBSETS, **kwargs):
        self._subsets = {_key(s): s for s in subsets}
        super().__init__(**kwargs)

    def _read_records(self, root: Path) -> list[RawRecord]:
        qa_dir = root / "QA_information" / "Open-access"
        if not qa_dir.is_dir():
            raise DatasetFormatError(f"omnimedvqa_derm: {qa_dir} not found (the open-access QA folder)")
        files = [p for p in sorted(qa_dir.glob("*.json")) if _key(p.stem) in self._subsets]
        if not files:
            raise DatasetFormatError(f"omnimedvqa_derm: none of {sorted(self._subsets.values())} in {qa_dir}; "
                                     f"found {[p.name for p in sorted(qa_dir.glob('*.json'))]}")
        records = []
        for path in files:
            try:
                entries = json.loads(path.read_text())
            except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
                raise DatasetFormatError(f"cannot read {path}: {e}") from None
            if not isinstance(entries, list):
                raise DatasetFormatError(f"{path}: expected a JSON list of questions")
            for i, q in enumerate(entries):
                missing = [k for k in _REQUIRED if k not in q]
                if missing:
                    raise DatasetFormatError(f"{path}: entry {i} lacks key(s) {missing}")
                if q["question_type"] != QUESTION_TYPE:
                    continue
                options = [str(q[k]).strip() for k in _OPTIONS if q.get(k) not in (None, "")]
                answer = match_option(q["gt_answer"], options)
                if answer is None:
                    # One malformed question must not stop the build: drop it, count it, name it.
                    self.report.excluded[ANSWER_NOT_AN_OPTION] += 1
                    log.warning("omnimedvqa_derm: skipping %s entry %d: gt_answer %r is not one of %s",
                                path, i, q["gt_answer"], options)
                    continue
                qid = str(q.get("question_id", i))
                records.append(RawRecord(
                    id=f"{path.stem}/{qid}", image=root / q["image_path"], raw_label=answer,
                    split="test",
                    extra={"question": str(q["question"]), "options": options,
                           "answer": answer, "subset": path.stem}))
        return records
