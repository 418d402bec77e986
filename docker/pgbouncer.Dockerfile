# PgBouncer in transaction mode in front of the compose file's PostgreSQL (docker/pgbouncer.ini), from
# Debian's package; pg_isready (postgresql-client) is the compose file's health check.
FROM debian:bookworm-slim
RUN apt-get update \
  && apt-get install -y --no-install-recommends pgbouncer postgresql-client \
  && rm -rf /var/lib/apt/lists/*
COPY docker/pgbouncer.ini docker/userlist.txt /etc/pgbouncer/
USER postgres
EXPOSE 6432
CMD ["pgbouncer", "/etc/pgbouncer/pgbouncer.ini"]
