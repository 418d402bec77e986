/** taskmill itself, through the flat burn-down and latency runs (one in-process node). */
import { runBurnDown } from '../flat/burn-down.ts';
import { runLatency } from '../flat/latency.ts';
import { describeKnobs, type NodeKnobs } from '../node-options.ts';
import type { Peer } from './peer.ts';

export function taskmillPeer(knobs: NodeKnobs): Peer {
  return {
    id: 'taskmill',
    label: 'taskmill (1 node)',
    settings: { ...describeKnobs(knobs) },
    usesTaskmillSchema: true,
    async burnDown(db, tasks) {
      const f = await runBurnDown({
        url: db.url,
        pool: db.pool,
        tasks,
        nodes: 1,
        spawn: false,
        knobs,
        progressLabel: 'taskmill',
      });
      return { tasks, seconds: f.seconds, tasksPerSec: f.tasksPerSec, insertSeconds: f.insertSeconds };
    },
    async latency(db, samples) {
      const f = await runLatency({ url: db.url, pool: db.pool, samples, nodes: 1, spawn: false, knobs });
      return f.scheduleToStart;
    },
  };
}
