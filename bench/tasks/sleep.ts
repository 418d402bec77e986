/** Waits `ms` milliseconds without using CPU (I/O-like task). */
export default function sleep(message: { ms: number }): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, message.ms));
}
