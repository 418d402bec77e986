/** A fixed amount of CPU work per task (see cpu-work.ts for how the amount is calibrated). */
import { burn } from './cpu-work.ts';

export default function spin(message: { iterations: number }): number {
  return burn(message.iterations);
}
