/**
 * docker-compose.yaml, checked without Docker: it parses, every file it and its Dockerfiles refer to
 * exists, and its parts agree with each other: PgBouncer pools in transaction mode towards the compose
 * file's PostgreSQL with its credentials, the three nodes send their queries through PgBouncer and
 * their LISTEN session straight to PostgreSQL, and their tasks module exists.
 */
import { existsSync, readFileSync } from 'node:fs';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { parse } from 'yaml';

const ROOT = path.resolve(import.meta.dirname, '..');

interface Service {
  image?: string;
  build?: { context: string; dockerfile: string };
  environment?: Record<string, string>;
  command?: string[];
  depends_on?: Record<string, { condition: string }>;
  ports?: string[];
}

const compose = parse(readFileSync(path.join(ROOT, 'docker-compose.yaml'), 'utf8'), { merge: true }) as {
  services: Record<string, Service>;
};
const services = compose.services;
const NODES = ['node-1', 'node-2', 'node-3'];

/** `key = value` lines of an ini section. */
function iniSection(text: string, section: string): Record<string, string> {
  const out: Record<string, string> = {};
  let current = '';
  for (const raw of text.split('\n')) {
    const line = raw.trim();
    if (line.startsWith(';') || line === '') continue;
    const header = /^\[(.+)\]$/.exec(line);
    if (header) current = header[1];
    else if (current === section) {
      const [key, ...rest] = line.split('=');
      out[key.trim()] = rest.join('=').trim();
    }
  }
  return out;
}

function flag(command: string[], name: string): string | undefined {
  const i = command.indexOf(name);
  return i < 0 ? undefined : command[i + 1];
}

describe('docker-compose.yaml', () => {
  it('runs PostgreSQL, PgBouncer and three nodes', () => {
    expect(Object.keys(services).sort()).toEqual(['node-1', 'node-2', 'node-3', 'pgbouncer', 'postgres']);
  });

  it('builds from files that exist, and copies only files that exist', () => {
    for (const [name, service] of Object.entries(services)) {
      if (!service.build) continue;
      const context = path.join(ROOT, service.build.context);
      const dockerfile = path.join(context, service.build.dockerfile);
      expect(existsSync(dockerfile), `${name}: ${service.build.dockerfile}`).toBe(true);
      for (const [, sources] of readFileSync(dockerfile, 'utf8').matchAll(/^COPY (.+) \S+$/gm)) {
        for (const source of sources.split(/\s+/)) {
          if (source === '.') continue;
          expect(existsSync(path.join(context, source)), `${name}: COPY ${source}`).toBe(true);
        }
      }
    }
    expect(existsSync(path.join(ROOT, '.dockerignore'))).toBe(true);
  });

  it('has PgBouncer pool in transaction mode towards the PostgreSQL service, with its credentials', () => {
    const pg = services.postgres.environment!;
    const ini = readFileSync(path.join(ROOT, 'docker/pgbouncer.ini'), 'utf8');
    const settings = iniSection(ini, 'pgbouncer');
    expect(settings.pool_mode).toBe('transaction');
    const target = iniSection(ini, 'databases')[pg.POSTGRES_DB];
    expect(target).toBe(`host=postgres port=5432 dbname=${pg.POSTGRES_DB}`);
    expect(readFileSync(path.join(ROOT, 'docker/userlist.txt'), 'utf8').trim()).toBe(
      `"${pg.POSTGRES_USER}" "${pg.POSTGRES_PASSWORD}"`,
    );
    expect(readFileSync(path.join(ROOT, 'docker/pgbouncer.Dockerfile'), 'utf8')).toContain(
      settings.auth_file.replace(/userlist\.txt$/, ''),
    );
    expect(services.pgbouncer.ports).toEqual([`127.0.0.1:${settings.listen_port}:${settings.listen_port}`]);
  });

  it('has every node query through PgBouncer and LISTEN on PostgreSQL, with a connection budget', () => {
    const pg = services.postgres.environment!;
    const port = iniSection(
      readFileSync(path.join(ROOT, 'docker/pgbouncer.ini'), 'utf8'),
      'pgbouncer',
    ).listen_port;
    const names: string[] = [];
    for (const name of NODES) {
      const node = services[name];
      const credentials = `${pg.POSTGRES_USER}:${pg.POSTGRES_PASSWORD}`;
      expect(node.environment?.DATABASE_URL).toBe(
        `postgres://${credentials}@pgbouncer:${port}/${pg.POSTGRES_DB}`,
      );
      const command = node.command!;
      expect(command[0]).toBe('node');
      expect(flag(command, '--listen-url')).toBe(`postgres://${credentials}@postgres:5432/${pg.POSTGRES_DB}`);
      expect(Number(flag(command, '--max-connections'))).toBeGreaterThan(0);
      expect(existsSync(path.join(ROOT, flag(command, '--tasks')!))).toBe(true);
      expect(node.depends_on).toMatchObject({
        postgres: { condition: 'service_healthy' },
        pgbouncer: { condition: 'service_healthy' },
      });
      names.push(flag(command, '--name')!);
    }
    expect(new Set(names).size).toBe(NODES.length);
  });
});
