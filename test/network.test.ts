/**
 * The `network` node option group (store/network.ts): defaults from the node timeout with their
 * floors, what a node is given over them, validation at start, and the pg options they become.
 */
import { describe, expect, it } from 'vitest';
import { parseNodeConfig } from '../node/node-config.ts';
import {
  connectionConfig,
  defaultNetworkOptions,
  networkOptions,
  workerConnectionConfig,
  workerNetworkOptions,
} from '../store/network.ts';

const config = (network: Record<string, unknown>, nodeTimeoutMs?: number) =>
  parseNodeConfig({
    connectionString: 'postgres://x@127.0.0.1/x',
    tasks: [],
    network,
    nodeTimeoutMs,
    heartbeatIntervalMs: 100,
  });

describe('network settings', () => {
  it.each([
    [
      10_000,
      {
        connectTimeoutMs: 10_000,
        queryTimeoutMs: 30_000,
        idleInTransactionTimeoutMs: 10_000,
        keepAliveMs: 10_000,
        exactlyOnceIdleTimeoutMs: 60_000,
      },
    ],
    [
      60_000,
      {
        connectTimeoutMs: 60_000,
        queryTimeoutMs: 180_000,
        idleInTransactionTimeoutMs: 60_000,
        keepAliveMs: 60_000,
        exactlyOnceIdleTimeoutMs: 360_000,
      },
    ],
    // Floors: a node timeout of a second (tests) does not make connections fail under load.
    [
      1_000,
      {
        connectTimeoutMs: 5_000,
        queryTimeoutMs: 10_000,
        idleInTransactionTimeoutMs: 5_000,
        keepAliveMs: 5_000,
        exactlyOnceIdleTimeoutMs: 60_000,
      },
    ],
  ])('defaults for a node timeout of %i ms', (nodeTimeoutMs, expected) => {
    expect(defaultNetworkOptions({ nodeTimeoutMs })).toEqual(expected);
    expect(config({}, nodeTimeoutMs).network).toEqual(expected);
  });

  it('takes what the node is given over the defaults', () => {
    expect(networkOptions({ queryTimeoutMs: 2_000, keepAliveMs: 0 }, { nodeTimeoutMs: 10_000 })).toEqual({
      connectTimeoutMs: 10_000,
      queryTimeoutMs: 2_000,
      idleInTransactionTimeoutMs: 10_000,
      keepAliveMs: 0,
      exactlyOnceIdleTimeoutMs: 60_000,
    });
  });

  it('refuses settings that cannot work, naming the option', () => {
    expect(() => config({ queryTimeoutMs: 50 })).toThrow(/queryTimeoutMs/);
    expect(() => config({ connectTimeoutMs: -1 })).toThrow(/connectTimeoutMs/);
    expect(() => config({ statementTimeoutMs: 1_000 })).toThrow(
      /INVALID_CONFIG|statementTimeoutMs|Unrecognized/,
    );
  });

  it('becomes pg options; 0 leaves a setting out', () => {
    expect(
      connectionConfig({
        connectTimeoutMs: 1_000,
        queryTimeoutMs: 2_000,
        idleInTransactionTimeoutMs: 3_000,
        keepAliveMs: 4_000,
        exactlyOnceIdleTimeoutMs: 5_000,
      }),
    ).toEqual({
      connectionTimeoutMillis: 1_000,
      query_timeout: 2_000,
      idle_in_transaction_session_timeout: 3_000,
      keepAlive: true,
      keepAliveInitialDelayMillis: 4_000,
    });
    expect(
      connectionConfig({
        connectTimeoutMs: 0,
        queryTimeoutMs: 0,
        idleInTransactionTimeoutMs: 0,
        keepAliveMs: 0,
        exactlyOnceIdleTimeoutMs: 0,
      }),
    ).toEqual({});
  });

  it("gives a worker thread's connections the connect timeout and keepalive, not the query timeout", () => {
    const network = networkOptions({ queryTimeoutMs: 2_000 }, { nodeTimeoutMs: 10_000 });
    expect(workerNetworkOptions(network)).toEqual({
      connectTimeoutMs: 10_000,
      keepAliveMs: 10_000,
      exactlyOnceIdleTimeoutMs: 60_000,
    });
    expect(workerConnectionConfig(workerNetworkOptions(network))).toEqual({
      connectionTimeoutMillis: 10_000,
      keepAlive: true,
      keepAliveInitialDelayMillis: 10_000,
    });
    expect(
      workerConnectionConfig({ connectTimeoutMs: 0, keepAliveMs: 0, exactlyOnceIdleTimeoutMs: 0 }),
    ).toEqual({});
  });
});
