# The phasegate worker image for a cluster whose GPU work runs on Modal: the worker launches Modal calls, scores
# on its CPU and freezes, so it carries Node, the compiled CLI and a small Python environment (the Modal client,
# numpy for scoring, transformers) but not torch, nnsight or pyvene. It runs as the unprivileged `node` user.

# ---- build: compile TypeScript; export the Python lock without torch and the steering libraries ------------------
FROM node:20-bookworm AS build
RUN apt-get update && apt-get install -y --no-install-recommends python3-pip && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY package.json package-lock.json ./
RUN npm ci --no-audit --no-fund --loglevel=error
COPY . .
RUN node_modules/.bin/tsc -p tsconfig.build.json && npm prune --omit=dev --no-audit --no-fund
RUN python3 -m pip install --break-system-packages --quiet "uv==0.13.8" && \
    uv export --project runtime --frozen --no-dev --no-default-groups --group modal --no-emit-project --no-hashes \
      --prune torch --prune nnsight --prune pyvene --prune accelerate -o /src/requirements-worker.txt

# ---- worker ------------------------------------------------------------------------------------------------------
FROM node:20-bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends python3 python3-venv util-linux ca-certificates && \
    rm -rf /var/lib/apt/lists/*
COPY --from=build /src/requirements-worker.txt /tmp/requirements-worker.txt
RUN python3 -m venv /opt/venv && /opt/venv/bin/pip install --no-cache-dir --quiet -r /tmp/requirements-worker.txt && \
    rm /tmp/requirements-worker.txt
WORKDIR /app
# Sources stay beside lib/: the worker bundles workflows/ at start, and finds its root by runtime/pyproject.toml.
COPY --from=build --chown=root:root /src /app
ENV PHASEGATE_PYTHON=/opt/venv/bin/python PHASEGATE_STATE_DIR=/state NODE_ENV=production
RUN mkdir -p /state && chown node:node /state
USER node
CMD ["bin/phasegate", "worker"]
