"""Optional: person names from presidio's NER, for deployments that have a spaCy model installed.

Nothing here runs unless asked: `PresidioPersons.from_installed_model()` imports presidio and spaCy
inside the call, and refuses (instead of letting presidio download the model, which it would)
when the model package is not installed.
"""

from __future__ import annotations

from typing import Any, Protocol

from gateway.privacy.findings import Finding


class _Result(Protocol):
    entity_type: str
    start: int
    end: int
    score: float


class _Analyzer(Protocol):
    def analyze(self, text: str, language: str, entities: list[str] | None = ...) -> list[Any]: ...


class PresidioPersons:
    """A detector (callable text -> findings) backed by a presidio `AnalyzerEngine`'s PERSON entity."""

    def __init__(self, analyzer: _Analyzer, *, language: str = "en", min_score: float = 0.5) -> None:
        """`analyzer`: a presidio AnalyzerEngine (or anything with the same `analyze`)."""
        self._analyzer = analyzer
        self._language = language
        self._min_score = min_score

    @classmethod
    def from_installed_model(cls, model: str = "en_core_web_lg", language: str = "en") -> PresidioPersons:
        """Build on a spaCy model that is already installed; never downloads one."""
        import spacy
        from presidio_analyzer import AnalyzerEngine
        from presidio_analyzer.nlp_engine import NlpEngineProvider

        if not spacy.util.is_package(model):
            raise RuntimeError(f"spaCy model {model!r} is not installed; install it from a local wheel first")
        config = {"nlp_engine_name": "spacy", "models": [{"lang_code": language, "model_name": model}]}
        engine = NlpEngineProvider(nlp_configuration=config).create_engine()
        return cls(AnalyzerEngine(nlp_engine=engine, supported_languages=[language]), language=language)

    def __call__(self, text: str) -> list[Finding]:
        """PERSON spans that presidio scores at least `min_score`."""
        results: list[_Result] = self._analyzer.analyze(
            text=text, language=self._language, entities=["PERSON"]
        )
        return [
            Finding("PERSON", r.start, r.end)
            for r in results
            if r.entity_type == "PERSON" and r.score >= self._min_score
        ]
