/** The columns of distributed-task-framework's published perf table, in its order. */
export const PUBLISHED_COLUMNS = [
  'Nodes',
  'Logs',
  'max-parallel-tasks-in-cluster-default',
  'batch-size',
  'polling-delay',
  'new-batch-size',
  'max-parallel-tasks-in-node',
  'manage-delay',
  'plan-factor',
  'Total tasks',
  'Total time',
  'RPM',
  'RPS',
] as const;
