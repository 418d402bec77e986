/** The flat benchmarks' task: does nothing, so what is measured is the runtime. */
export default function noop(): void {}
