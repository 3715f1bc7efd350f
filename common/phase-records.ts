/**
 * The phase record: what a phase decided, spent and froze, kept outside Temporal's history, which the server
 * deletes once a closed workflow passes the namespace's retention. The workflow writes it as it goes (the
 * `recordPhase` activity, at every change of status, decision and attempt); `start`, `requires_frozen`,
 * `status`, `ledger`, `report`, `verify`, `reopen` and `list` fall back to it when Temporal no longer has the
 * phase.
 *
 * The embedded store is one JSON document per phase in `<state>/records/`, replaced atomically (written to a
 * temporary file, fsynced, renamed, the folder fsynced), so a crash leaves the old record or the new one, never
 * half of either. With workers on several hosts the records live in the shared artifact store instead
 * (`records/<phaseId>.json` in the bucket, common/artifact-store.ts), so a record written by one worker is read by
 * another worker and by the CLI on any host. A FROZEN record is final: no later write replaces it.
 *
 * A record that cannot be read (not JSON, or not a phase record: a disk error, a hand edit) is never silently
 * dropped or overwritten: `list` leaves it out and names it, `read` says so (a start is refused), and the running
 * phase's own next write keeps the unreadable bytes beside the record (`<phaseId>.json.unreadable-<time>`) before
 * it writes its state, which holds everything the record did. A phase that has applied no decision yet (a start,
 * perhaps straight through Temporal over a record that said FROZEN) is refused instead: it has nothing to keep.
 */
import { closeSync, fsyncSync, mkdirSync, openSync, readdirSync, readFileSync, renameSync, writeSync } from 'node:fs';
import path from 'node:path';
import type { PhaseInput, PhaseState } from '../workflows/definitions';
import { artifactStoreFromEnv, type ArtifactStore } from './artifact-store';
import { resolvePaths, type Env } from './config';

export const RECORD_VERSION = 1;

/** The start input as recorded: everything needed to show, verify, restart or reopen the phase. */
export type RecordedInput = Omit<PhaseInput, 'resume' | 'continueAsNewAfterEvents' | 'publishSearchAttributes'>;

export interface PhaseRecord {
  recordVersion: typeof RECORD_VERSION;
  phaseId: string;
  phaseName: string;
  protocolHash: string;
  input: RecordedInput;
  state: PhaseState;
  updatedAt: string;
}

/** Why a record may not be written (a frozen phase's record is final). */
export class RecordRefused extends Error {
  override readonly name = 'RecordRefused';
}

/** A record that is there but cannot be read; the message names the phase, never the record's content. */
export class RecordUnreadable extends Error {
  override readonly name = 'RecordUnreadable';
}

/** The records `list` found: the readable ones, newest first, and the phase ids whose record is unreadable. */
export interface RecordList {
  records: PhaseRecord[];
  unreadable: string[];
}

const isObject = (v: unknown): v is Record<string, unknown> => v !== null && typeof v === 'object' && !Array.isArray(v);

/** A record's text as a record of `phaseId`, or RecordUnreadable (naming what is wrong, not quoting the text). */
function parseRecord(text: string, phaseId: string): PhaseRecord {
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch {
    throw new RecordUnreadable(`the record of phase ${phaseId} is unreadable: not JSON (${text.length} bytes)`);
  }
  const state = isObject(value) ? value.state : undefined;
  const budget = isObject(state) ? state.budget : undefined;
  // What list, status and the metrics read of every record, so that one odd record cannot break them for all.
  const sound =
    isObject(value) && value.phaseId === phaseId && typeof value.phaseName === 'string' && typeof value.updatedAt === 'string' && isObject(value.input) &&
    isObject(state) && typeof state.status === 'string' && typeof state.startedAt === 'string' && Array.isArray(state.events) && Array.isArray(state.models) &&
    isObject(budget) && typeof budget.approvedUsd === 'number' &&
    Array.isArray(state.ledger) && state.ledger.every((e) => isObject(e) && typeof e.usd === 'number' && typeof e.seconds === 'number' && typeof e.modelKey === 'string');
  if (!sound) throw new RecordUnreadable(`the record of phase ${phaseId} is unreadable: not a phase record of this phase`);
  return value as PhaseRecord;
}

/** A name beside the record for its unreadable bytes, which `list` does not take for a record. */
const asideName = (name: string, now: Date): string => `${name}.unreadable-${now.toISOString().replace(/[:.]/g, '-')}`;

/** Whether `state` may be written over an unreadable record (its bytes kept aside): only a phase with decisions. */
function mayReplaceUnreadable(err: RecordUnreadable, state: PhaseState): void {
  if (state.appliedDecisions.length === 0) {
    throw new RecordRefused(`${err.message}: a phase with no decision yet is not recorded over it (it may have said FROZEN); restore the record or move it aside`);
  }
}

const PHASE_ID = /^[a-z0-9][a-z0-9-]{0,199}$/;

/** Where phase records are kept: a folder on this host, or the shared artifact store. */
export interface PhaseRecords {
  /** The phase's record; null when there is none; RecordUnreadable when it is there but cannot be read. */
  read(phaseId: string): Promise<PhaseRecord | null>;
  /** Every readable record, newest first, and the ids of unreadable ones. */
  list(): Promise<RecordList>;
  write(input: PhaseInput, state: PhaseState, now?: Date): Promise<PhaseRecord>;
}

/** The records of a deployment: the shared store's when it has one, else the state folder's. */
export function phaseRecords(store: ArtifactStore, recordsDir: string): PhaseRecords {
  return store.kind === 'local' ? new PhaseRecordStore(recordsDir) : new StoredPhaseRecords(store);
}

/** The artifact store and the phase records the environment configures (one place for the CLI, HTTP API, worker). */
export function storesFromEnv(env: Readonly<Env>): { store: ArtifactStore; records: PhaseRecords } {
  const paths = resolvePaths(env);
  const store = artifactStoreFromEnv(env, paths.stateDir);
  return { store, records: phaseRecords(store, paths.recordsDir) };
}

function checkPhaseId(phaseId: string): string {
  if (!PHASE_ID.test(phaseId)) throw new RecordRefused(`not a phase id: ${phaseId.slice(0, 80)}`);
  return phaseId;
}

/** The record to write over `existing`; refused when `existing` is FROZEN and this is not the same freeze. */
function nextRecord(existing: PhaseRecord | null, input: PhaseInput, state: PhaseState, now: Date): PhaseRecord {
  if (existing?.state.status === 'FROZEN' && (state.status !== 'FROZEN' || existing.state.startedAt !== state.startedAt)) {
    throw new RecordRefused(`phase ${input.phaseId} is FROZEN in its record (${existing.updatedAt}); a frozen phase is never run again`);
  }
  const { resume: _r, continueAsNewAfterEvents: _c, publishSearchAttributes: _p, ...recorded } = input;
  return {
    recordVersion: RECORD_VERSION,
    phaseId: input.phaseId,
    phaseName: input.protocol.phase,
    protocolHash: input.protocolHash,
    input: recorded,
    state,
    updatedAt: now.toISOString(),
  };
}

const newestFirst = (a: PhaseRecord, b: PhaseRecord): number => b.updatedAt.localeCompare(a.updatedAt);

/** One JSON file per phase in a folder of this host. */
export class PhaseRecordStore implements PhaseRecords {
  constructor(readonly dir: string) {}

  private file(phaseId: string): string {
    return path.join(this.dir, `${checkPhaseId(phaseId)}.json`);
  }

  read(phaseId: string): Promise<PhaseRecord | null> {
    return Promise.resolve(this.readSync(phaseId));
  }

  private readSync(phaseId: string): PhaseRecord | null {
    let text: string;
    try {
      text = readFileSync(this.file(phaseId), 'utf8');
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT' || err instanceof RecordRefused) return null;
      throw err;
    }
    return parseRecord(text, phaseId);
  }

  list(): Promise<RecordList> {
    let names: string[];
    try {
      names = readdirSync(this.dir).filter((n) => n.endsWith('.json') && !n.startsWith('.'));
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') return Promise.resolve({ records: [], unreadable: [] });
      throw err;
    }
    return collect(names.map((n) => n.slice(0, -'.json'.length)), (id) => this.read(id));
  }

  // async: a refusal is a rejected promise, as from the shared store.
  // eslint-disable-next-line @typescript-eslint/require-await
  async write(input: PhaseInput, state: PhaseState, now: Date = new Date()): Promise<PhaseRecord> {
    let existing: PhaseRecord | null = null;
    try {
      existing = this.readSync(input.phaseId);
    } catch (err) {
      if (!(err instanceof RecordUnreadable)) throw err;
      mayReplaceUnreadable(err, state);
      const file = this.file(input.phaseId);
      renameSync(file, asideName(file, now));
    }
    const record = nextRecord(existing, input, state, now);
    writeDurably(this.file(input.phaseId), `${JSON.stringify(record, null, 2)}\n`);
    return record;
  }
}

/**
 * Records as objects `records/<phaseId>.json` in the shared artifact store. Only the phase's own workflow writes
 * its record (one activity at a time), so read-then-write needs no lock; an object PUT replaces the whole record.
 */
export class StoredPhaseRecords implements PhaseRecords {
  constructor(private readonly store: ArtifactStore) {}

  async read(phaseId: string): Promise<PhaseRecord | null> {
    if (!PHASE_ID.test(phaseId)) return null;
    const text = await this.store.getText(`records/${phaseId}.json`);
    return text === null ? null : parseRecord(text, phaseId);
  }

  async list(): Promise<RecordList> {
    const ids = (await this.store.list('records/')).filter((k) => k.endsWith('.json')).map((k) => k.slice('records/'.length, -'.json'.length));
    return collect(ids, (id) => this.read(id));
  }

  async write(input: PhaseInput, state: PhaseState, now: Date = new Date()): Promise<PhaseRecord> {
    const key = `records/${checkPhaseId(input.phaseId)}.json`;
    let existing: PhaseRecord | null = null;
    try {
      existing = await this.read(input.phaseId);
    } catch (err) {
      if (!(err instanceof RecordUnreadable)) throw err;
      mayReplaceUnreadable(err, state);
      await this.store.putText(asideName(key, now), (await this.store.getText(key)) ?? '');
    }
    const record = nextRecord(existing, input, state, now);
    await this.store.putText(`records/${input.phaseId}.json`, `${JSON.stringify(record, null, 2)}\n`);
    return record;
  }
}

/** Reads each id's record (at once): the readable ones newest first, the unreadable ones named. */
async function collect(ids: string[], read: (id: string) => Promise<PhaseRecord | null>): Promise<RecordList> {
  const outcomes = await Promise.all(
    ids.map(async (id) => {
      try {
        return { id, record: await read(id) };
      } catch (err) {
        if (err instanceof RecordUnreadable) return { id, record: undefined };
        throw err;
      }
    }),
  );
  const records = outcomes.flatMap((o) => (o.record ? [o.record] : []));
  const unreadable = outcomes.filter((o) => o.record === undefined).map((o) => o.id);
  return { records: records.sort(newestFirst), unreadable: unreadable.sort() };
}

/** Replaces `file` so that a crash at any point leaves either the old content or the new, both on disk. */
function writeDurably(file: string, content: string): void {
  const dir = path.dirname(file);
  mkdirSync(dir, { recursive: true });
  const tmp = path.join(dir, `.${path.basename(file)}.${process.pid}.tmp`);
  const fd = openSync(tmp, 'w', 0o644);
  try {
    writeSync(fd, content);
    fsyncSync(fd);
  } finally {
    closeSync(fd);
  }
  renameSync(tmp, file);
  const dirFd = openSync(dir, 'r');
  try {
    fsyncSync(dirFd);
  } finally {
    closeSync(dirFd);
  }
}
