# syntax=docker/dockerfile:1
# The token service. A build stage compiles the TypeScript; the runtime stage
# holds only production dependencies and dist/, and runs as a non-root user.
#
#   docker build -t token-service .
#   # development, embedded store (prints a bootstrap admin token on first start):
#   docker run --rm -p 50051:50051 -p 8080:8080 token-service
#   # production, on PostgreSQL:
#   docker run --rm -e TOKEN_ENVIRONMENT=production -e DATABASE_URL=postgres://… \
#     -e KEY_ENCRYPTION_KEY_FILE=/run/secrets/kek -v "$PWD/kek:/run/secrets/kek:ro" \
#     -p 50051:50051 -p 8080:8080 token-service
#   # (make the key once, kept in your secret store: openssl rand -base64 32 > kek;
#   #  readable by the container user only)
#
# Every ENV below is a configuration key of src/config.ts (README,
# "Configuration"); test/unit/examples.test.ts checks that they are.

FROM node:20-bookworm-slim AS build
WORKDIR /app
COPY package.json package-lock.json ./
RUN npm ci --no-audit --no-fund
# gen/ is committed (and checked fresh by the tests), so no buf here.
COPY tsconfig.json tsconfig.build.json ./
COPY gen ./gen
COPY src ./src
RUN npm run build

FROM node:20-bookworm-slim AS runtime
WORKDIR /app
COPY package.json package-lock.json ./
RUN npm ci --omit=dev --no-audit --no-fund && npm cache clean --force
COPY --from=build /app/dist ./dist
# The embedded store's directory, used only without DATABASE_URL.
RUN mkdir -p /app/data && chown 1000:1000 /app/data
# The image's `node` user, by number, so Kubernetes' runAsNonRoot can verify it.
USER 1000:1000
ENV LISTEN_HOST=0.0.0.0 \
    GRPC_PORT=50051 \
    HTTP_PORT=8080 \
    DATA_DIR=/app/data
EXPOSE 50051 8080
# No HEALTHCHECK: Kubernetes ignores it and probes /healthz and /readyz
# instead (examples/kubernetes), and a fixed one would fail once TLS is on.
# For plain Docker or Compose without TLS, a check that needs no curl:
#   node -e "fetch('http://127.0.0.1:8080/readyz').then(r=>process.exit(r.ok?0:1),()=>process.exit(1))"
# node is PID 1 and handles SIGTERM itself: stop accepting, drain within
# SHUTDOWN_GRACE, flush batched writes, close the store, exit 0.
STOPSIGNAL SIGTERM
CMD ["node", "dist/src/main.js"]
