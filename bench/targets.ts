/**
 * The performance targets the benchmarks are held to; each result records whether its run met them.
 */
export const TARGETS = {
  /** Schedule-to-start on an idle node. */
  latency: { p50Ms: 5, p99Ms: 25 },
  /** Throughput x cost / cores for tasks of at least 10 ms of CPU. */
  cpuEfficiency: { min: 0.9, minCostMs: 10 },
  /** Flat burn-down, one node: x graphile-worker's fastest configuration, and of the bare-SQL ceiling. */
  burnDown: { vsGraphileFastest: 2, ofBareSql: 0.5 },
  /** Workflow benchmark, P = A = 1000, L1 = L2 = 10, one node: 20 x the published 279 RPS. */
  workflow: { rps: 5_600, pipelines: 1_000 },
} as const;
