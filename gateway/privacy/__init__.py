"""PII scrubbing for the capture path: `Scrubber.find / scrub / scrub_call / scrub_feedback`.

Types and how each is recognised:
    EMAIL   regex                                     patterns.py
    CARD    13-19 digits, Luhn-validated              patterns.py
    IBAN    ISO 13616 mod-97 checksum                 patterns.py
    IP      IPv4 / IPv6, validated by `ipaddress`     patterns.py
    SSN     US social security numbers AAA-GG-SSSS    patterns.py
    PHONE   international and national formats,       phones.py
            validated by `phonenumbers` (libphonenumber)
    PERSON  name lists + context rules                names.py (optionally presidio NER, ner.py)

Person names: presidio vs scrubadub. Both were looked at (presidio-analyzer 2.2.366, scrubadub 2.0.1).
- scrubadub's last release is from 2023 and it pins textblob==0.15.3 (2019); its name detector tags
  proper nouns with TextBlob's pattern tagger (any capitalised word: low precision) or needs
  scrubadub-spacy and a spaCy model; it pulls in scikit-learn, dateparser and faker.
- presidio (Microsoft, monthly releases, MIT) is the well-kept one, and its NER is the better name
  detector, but it is only as good as the spaCy model behind it, and it downloads `en_core_web_lg`
  from GitHub at first use. No spaCy model is published on PyPI by Explosion (only third-party
  re-uploads, which we will not trust with a privacy guarantee), and GitHub and model hubs are not
  reachable here. The pattern recognisers presidio would add (email, phone via the same
  `phonenumbers`, Luhn cards, IBAN, IP) are a few lines each here, while presidio runs spaCy's whole
  pipeline on every text and pulls spaCy in as a hard dependency.
So presidio is the pick *where a model exists*: `ner.PresidioPersons.from_installed_model()` plugs it
into a Scrubber via `extra_detectors` and refuses to download. By default, offline, person names come
from the per-locale first/last name lists that `faker` (maintained, widely used) ships inside its
package, with contextual rules (see names.py). That is a heuristic: it misses names in no list and
without a cue, and non-Latin/Cyrillic scripts.
"""

from gateway.privacy.findings import Finding, PiiType
from gateway.privacy.ner import PresidioPersons
from gateway.privacy.scrubber import ALL_TYPES, Scrubber

__all__ = ["ALL_TYPES", "Finding", "PiiType", "PresidioPersons", "Scrubber"]
