/**
 * The phase record: what a phase decided, spent and froze, kept outside Temporal's history, which the server
 * deletes once a closed workflow passes the namespace's retention. The workflow writes it as it goes (the
 * `recordPhase` activity, at every change of status, decision and attempt); `start`, `requires_frozen`,
 * `status`, `ledger`, `report`, `verify`, `reopen` and `list` fall back to it when Temporal no longer has the
 * phase.
 *
 * The embedded store is one JSON document per phase in `<state>/records/`, replaced atomically (written to a
 * temporary file, fsynced, renamed, the folder fsynced), so a crash leaves the old record or the new one, never
 * half of either. A FROZEN record is final: no later write replaces it. (Workers on several hosts need a shared
 * store instead; see the README.)
 */
import { closeSync, fsyncSync, mkdirSync, openSync, readdirSync, readFileSync, renameSync, writeSync } from 'node:fs';
import path from 'node:path';
import type { PhaseInput, PhaseState } from '../workflows/definitions';

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

const PHASE_ID = /^[a-z0-9][a-z0-9-]{0,199}$/;

export class PhaseRecordStore {
  constructor(readonly dir: string) {}

  private file(phaseId: string): string {
    if (!PHASE_ID.test(phaseId)) throw new RecordRefused(`not a phase id: ${phaseId.slice(0, 80)}`);
    return path.join(this.dir, `${phaseId}.json`);
  }

  read(phaseId: string): PhaseRecord | null {
    try {
      return JSON.parse(readFileSync(this.file(phaseId), 'utf8')) as PhaseRecord;
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT' || err instanceof RecordRefused) return null;
      throw err;
    }
  }

  /** Every record, newest first. */
  list(): PhaseRecord[] {
    let names: string[];
    try {
      names = readdirSync(this.dir).filter((n) => n.endsWith('.json'));
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') return [];
      throw err;
    }
    return names
      .map((n) => this.read(n.slice(0, -'.json'.length)))
      .filter((r): r is PhaseRecord => r !== null)
      .sort((a, b) => b.updatedAt.localeCompare(a.updatedAt));
  }

  write(input: PhaseInput, state: PhaseState, now: Date = new Date()): PhaseRecord {
    const existing = this.read(input.phaseId);
    if (existing?.state.status === 'FROZEN' && (state.status !== 'FROZEN' || existing.state.startedAt !== state.startedAt)) {
      throw new RecordRefused(`phase ${input.phaseId} is FROZEN in its record (${existing.updatedAt}); a frozen phase is never run again`);
    }
    const { resume: _r, continueAsNewAfterEvents: _c, publishSearchAttributes: _p, ...recorded } = input;
    const record: PhaseRecord = {
      recordVersion: RECORD_VERSION,
      phaseId: input.phaseId,
      phaseName: input.protocol.phase,
      protocolHash: input.protocolHash,
      input: recorded,
      state,
      updatedAt: now.toISOString(),
    };
    writeDurably(this.file(input.phaseId), `${JSON.stringify(record, null, 2)}\n`);
    return record;
  }
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
