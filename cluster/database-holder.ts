/**
 * The embedded PostgreSQL of a local cluster, held by a process of its own (local-cluster.ts spawns it
 * detached, through node-process.ts; it is not meant to be run by hand):
 *
 *   node database-holder.js '<EmbeddedOptions as JSON>'
 *
 * Why a process: the server must outlive the node processes when the cluster stops (nodes first, the
 * database last), and a server started by the cluster process itself would sit in the terminal's
 * process group, where Ctrl-C shuts it down at once, in the middle of the nodes' graceful stop.
 *
 * It prints one line, `{"url": "...", "owner": true|false}` (owner false: a server was already running
 * from that folder and is left alone; the process then exits at once), and then holds the server until
 * SIGTERM or SIGINT, or until its stdin pipe closes (the cluster process died): it stops the server
 * and exits 0 (1 if stopping failed).
 *
 * States: starting -> holding -> stopping -> exited.
 */
import { startEmbeddedPostgres, type EmbeddedOptions } from '../store/database.ts';
import { onParentGone } from './node-process.ts';

const options = JSON.parse(process.argv[2] ?? '{}') as EmbeddedOptions;
const db = await startEmbeddedPostgres(options);
process.stdout.write(`${JSON.stringify({ url: db.url, owner: db.owner })}\n`);
if (!db.owner) process.exit(0);

// Keeps the process alive while it holds the server (the server's pipes may not).
const hold = setInterval(() => {}, 1 << 30);
let stopping = false;
const stop = () => {
  if (stopping) return;
  stopping = true;
  clearInterval(hold);
  db.stop().then(
    () => process.exit(0),
    (error: unknown) => {
      process.stderr.write(`could not stop the embedded PostgreSQL: ${String(error)}\n`);
      process.exit(1);
    },
  );
};
process.on('SIGTERM', stop);
process.on('SIGINT', stop);
onParentGone(stop);
