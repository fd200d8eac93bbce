"""Background capture: what happens to a call or a piece of feedback between the request path and the store
(pricing, implicit signals, PII scrubbing, retention), and how feedback becomes a quality figure."""
