# The phasegate worker image: the same set-up script as a developer machine, then the compiled CLI.
FROM node:20-bookworm
RUN apt-get update && apt-get install -y --no-install-recommends python3 python3-pip git && rm -rf /var/lib/apt/lists/*
WORKDIR /app
COPY . .
RUN python3 -m pip install --break-system-packages --quiet "uv==0.13.8" && scripts/setup.sh && node_modules/.bin/tsc -p tsconfig.build.json
CMD ["bin/phasegate", "worker"]
