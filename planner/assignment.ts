/**
 * Pure assignment logic of one planning pass: given claimed candidates (in the order to serve them),
 * live nodes with their free slots, and budgets, decide which node gets each task. Tasks of one
 * affinity key go to the same node within a pass (affinity ownership), so a node's mailbox can keep
 * them apart. A task that fits nowhere, or whose budget is spent, is left out and stays ready.
 * Budgets are counted down by id: by default a task spends its name's budget (maxParallelInCluster);
 * under flow control also its concurrency and rate budgets (planner/flow.ts budgetsOf).
 */
import type { Candidate } from '../store/assignments.ts';

export type { Candidate } from '../store/assignments.ts';

export interface NodeSlots {
  id: string;
  /** Tasks it may still receive in this pass: capacity x plan factor - tasks it holds. */
  free: number;
  taskNames: ReadonlySet<string>;
}

export interface Assignment {
  taskIds: string[];
  nodeIds: string[];
  /** Tasks per node in this pass. */
  perNode: Map<string, number>;
}

export function assignTasks(
  candidates: Candidate[],
  nodes: NodeSlots[],
  budgets: Map<string, number>,
  budgetsOf: (task: Candidate) => string[] = (task) => [task.name],
): Assignment {
  const free = new Map(nodes.map((n) => [n.id, n.free]));
  const budget = new Map(budgets);
  const keyOwner = new Map<string, string>();
  const result: Assignment = { taskIds: [], nodeIds: [], perNode: new Map() };

  for (const task of candidates) {
    const spends = budgetsOf(task).filter((id) => budget.has(id));
    if (spends.some((id) => budget.get(id)! <= 0)) continue;
    const key = task.affinity === null ? undefined : `${task.affinity_group}\u0000${task.affinity}`;
    let nodeId = key === undefined ? undefined : keyOwner.get(key);
    if (nodeId === undefined || (free.get(nodeId) ?? 0) <= 0) nodeId = mostFree(nodes, free, task.name);
    if (nodeId === undefined) continue;

    free.set(nodeId, (free.get(nodeId) ?? 0) - 1);
    for (const id of spends) budget.set(id, budget.get(id)! - 1);
    if (key !== undefined) keyOwner.set(key, nodeId);
    result.taskIds.push(task.id);
    result.nodeIds.push(nodeId);
    result.perNode.set(nodeId, (result.perNode.get(nodeId) ?? 0) + 1);
  }
  return result;
}

function mostFree(nodes: NodeSlots[], free: Map<string, number>, name: string): string | undefined {
  let best: string | undefined;
  let bestFree = 0;
  for (const node of nodes) {
    const f = free.get(node.id) ?? 0;
    if (f > bestFree && node.taskNames.has(name)) {
      best = node.id;
      bestFree = f;
    }
  }
  return best;
}
