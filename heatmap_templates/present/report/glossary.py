"""One name per quantity: the report's glossary, defined once here and used by every section.

:data:`GLOSSARY` holds each quantity the page shows under the one name the page gives it, with a one-line
definition; the page's glossary section (:func:`glossary_html`) lists them, and :func:`header_title` gives a table
header that names or abbreviates one of them its definition as a ``title`` (shown on hover).
"""
from __future__ import annotations

from html import escape

from heatmap_templates.analysis.scoring import DEFAULT_ATYPICAL_PERCENTILE

CONSISTENCY = "consistency (mean pairwise correlation)"  # the one name of a template's (or strategy's) r-bar

GLOSSARY: dict[str, str] = {
    "similarity": "how alike an image's registered, normalised heatmap is to a template, by the report's similarity "
                  "measure (Pearson r by default: 1 the same pattern, 0 unrelated)",
    CONSISTENCY: "the mean Pearson correlation over every pair of a template's (or a strategy's) member heatmaps: "
                 "how much its members agree (1: identical maps)",
    "LOO r": "leave-one-out correlation: a member's heatmap against the template built without it",
    "LOO percentile": "where an image's similarity falls among its predicted class's LOO r values (0 to 100)",
    "atypical": f"an image whose similarity is below the {DEFAULT_ATYPICAL_PERCENTILE:g}th percentile of its predicted "
                "class's LOO r values; in a class with strategies, members are ranked by their strategy similarity",
    "strategy": "a group of a class's members whose heatmaps look alike (spectral clustering of their maps); "
                "its prototype is the group's mean map",
    "strategy similarity": "an image's similarity to the prototype of its own strategy",
    "ARI": "adjusted Rand index: agreement of the strategies found on bootstrap resamples with those found on all "
           "members (1: the same split every time, 0: chance)",
    "lung-field energy": "the share of a map's positive values that lies inside the reference lung fields",
    "AUC": "area under the ROC curve: the chance that a random positive scores above a random negative (0.5: chance); "
           "pixel AUC ranks a template's pixels against the planted lesion pixels",
    "F1": "the harmonic mean of precision and recall",
    "AOPC": "area over the perturbation curve: the mean fall of the predicted class's probability as the top-ranked "
            "pixels are removed (higher: the ranking marks what the model uses)",
    "enrichment": "a zone's share of a map's positive energy over its share of the frame (1: what a uniform map puts "
                  "there)",
    "t": "Welch's t statistic of a pixel's difference between two groups of maps",
    "d": "Cohen's d: a difference between groups in units of their pooled standard deviation",
    "p": "the permutation p-value, corrected over the whole map as the contrast states",
    "TREAT margin": "the smallest difference a contrast counts as significant (testing against a threshold, "
                    "McCarthy and Smyth 2009), not merely a difference from 0",
    "95 % CI": "a 95 % interval: percentile bootstrap over images (patients where known), or the 2.5th to 97.5th "
               "percentiles over a template's bootstrap replicates where a section says so",
}

# A table header (or a word in it) -> the glossary term it names.
HEADER_TERMS: dict[str, str] = {
    "similarity": "similarity", "consistency": CONSISTENCY, CONSISTENCY: CONSISTENCY, "LOO r": "LOO r",
    "LOO percentile": "LOO percentile", "atypical": "atypical", "strategy": "strategy",
    "strategy similarity": "strategy similarity", "lung energy": "lung-field energy", "ROC AUC": "AUC", "AUC": "AUC",
    "pixel AUC": "AUC", "F1": "F1", "AOPC": "AOPC", "AOPC ratio": "AOPC", "peak t": "t", "mean d": "d", "p": "p",
    "95 % CI": "95 % CI",
}
_WORDS = ("ROC AUC", "pixel AUC", "AUC", "AOPC", "F1", "95 % CI", "LOO r")  # looked for inside longer headers


def header_title(header: str) -> str | None:
    """The definition a table header gets as its ``title``: of the term it is, else of the first term it contains."""
    term = HEADER_TERMS.get(header.strip())
    if term is None:
        term = next((HEADER_TERMS[word] for word in _WORDS if word in header), None)
    return None if term is None else f"{term}: {GLOSSARY[term]}"


def glossary_html() -> str:
    """The glossary section: every quantity once, one line each."""
    items = "".join(f"<dt>{escape(name)}</dt><dd>{escape(definition)}</dd>" for name, definition in GLOSSARY.items())
    return f"<section id=\"glossary\"><h2>Glossary</h2><dl class=\"glossary\">{items}</dl></section>"
