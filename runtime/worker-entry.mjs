// Worker-thread bootstrap (Piscina's filename): registers the TypeScript loader in this thread before
// anything else is imported, so worker.ts and TypeScript handler modules load whether the node runs
// from source or not. (An `--import tsx` flag alone registers its hooks too late for the thread's
// first imports on Node 20.)
import { register } from 'tsx/esm/api';

register();
const worker = await import('./worker.ts');
export default worker.default;
