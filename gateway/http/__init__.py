"""The HTTP surface: the app, request helpers, the OpenAI, feedback and admin endpoints, auth and limits."""
