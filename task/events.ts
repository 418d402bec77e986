/** Events of durable waits (docs/durable-waits.md): what names and keys are, checked alike by ctx.waitForEvent() and sendEvent(). */
import { TaskmillError } from './errors.ts';

/** Longest event name or key, characters. */
export const MAX_EVENT_NAME_LENGTH = 200;

/** Checks an event's name and key, as ctx.waitForEvent() and sendEvent() take them. */
export function checkEventName(call: string, name: unknown, key: unknown): void {
  if (typeof name !== 'string' || name === '' || name.length > MAX_EVENT_NAME_LENGTH) {
    throw new TaskmillError(
      'INVALID_ARGUMENT',
      `${call} needs an event name of 1 to ${MAX_EVENT_NAME_LENGTH} characters, got ${JSON.stringify(name)}.`,
    );
  }
  if (typeof key !== 'string' || key.length > MAX_EVENT_NAME_LENGTH) {
    throw new TaskmillError(
      'INVALID_ARGUMENT',
      `${call} needs a key: a string of at most ${MAX_EVENT_NAME_LENGTH} characters (the occurrence of ${name} to wait for), got ${JSON.stringify(key)}.`,
    );
  }
}
