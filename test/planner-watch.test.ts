/**
 * A cluster without a planner says so: a node running without one warns once when no node has led
 * the planner for longer than the lease time to live, and `taskmill status` prints a warning.
 */
import { afterAll, describe, expect, it, vi } from 'vitest';
import { renderStatus } from '../cli/commands/status.ts';
import { clusterStats } from '../store/inspect.ts';
import { PlannerWatch } from '../planner/planner-watch.ts';
import { until, useTestDatabase } from './helpers/database.ts';
import { startTestNode, stopAllNodes } from './helpers/nodes.ts';

const db = useTestDatabase();

afterAll(stopAllNodes);

function recorder() {
  const lines: { level: 'warn' | 'info'; msg: string }[] = [];
  const log = {
    warn: (_obj: unknown, msg?: string) => lines.push({ level: 'warn', msg: msg ?? String(_obj) }),
    info: (obj: unknown, msg?: string) => lines.push({ level: 'info', msg: msg ?? String(obj) }),
  };
  return { lines, log: log as never };
}

describe('the planner watch', () => {
  it('warns once per absence of a leader longer than the lease, and says when one is back', async () => {
    const { lines, log } = recorder();
    const watch = new PlannerWatch({ db: db.pool, ttlMs: 300, log, onError: (e) => expect.fail(String(e)) });
    const first = await watch.runOnce();
    expect(first).toMatchObject({ leader: false, warned: false });
    expect(lines).toEqual([]);
    await until(async () => (await watch.runOnce()).warned, 10_000);
    expect(watch.plannerMissing).toBe(true);
    for (let i = 0; i < 3; i++) expect((await watch.runOnce()).warned).toBe(false);
    expect(lines.filter((l) => l.level === 'warn')).toHaveLength(1);
    expect(lines[0].msg).toMatch(/no node of the cluster runs a planner/);

    await db.pool.query(
      `insert into tm_leader (node_id, expires_at) values (gen_random_uuid(), now() + interval '1 hour')`,
    );
    expect(await watch.runOnce()).toEqual({ leader: true, missingSince: null, warned: false });
    expect(watch.plannerMissing).toBe(false);
    expect(lines.at(-1)).toMatchObject({
      level: 'info',
      msg: expect.stringMatching(/leads the planner again/),
    });

    // The lease expires: a new absence, counted from the expiry, warned once more.
    await db.pool.query(`update tm_leader set expires_at = now()`);
    await until(async () => (await watch.runOnce()).warned, 10_000);
    expect(lines.filter((l) => l.level === 'warn')).toHaveLength(2);
    await db.pool.query(`delete from tm_leader`);
  });

  it('runs on a node started without a planner, which warns while no other node plans', async () => {
    const node = await startTestNode(db.url, { name: 'planless', planner: false });
    const warn = vi.spyOn(node.log, 'warn');
    // The default lease time to live is 5 s: the warning comes within two of them.
    await until(
      () => warn.mock.calls.some((c) => /no node of the cluster runs a planner/.test(String(c[1]))),
      30_000,
      100,
    );
    const status = renderStatus(await clusterStats(db.pool));
    expect(status).toMatch(/^leader: none$/m);
    expect(status).toMatch(/^warning: no node leads the planner, so ready tasks are not handed out/m);
    await node.stop();
  }, 60_000);
});
