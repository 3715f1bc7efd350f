/**
 * Freeze: writes the canonical artifacts of a phase, with provenance, a manifest of sha256 sums and the closeout
 * report, then makes everything read-only. A folder that is already frozen is never rewritten: a retry of a
 * freeze that completed returns the existing record, anything else is refused.
 */
import { ApplicationFailure } from '@temporalio/common';
import { execFileSync } from 'node:child_process';
import { chmodSync, copyFileSync, existsSync, mkdirSync, readdirSync, readFileSync, renameSync, rmSync, statSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { ErrorTypes, type FreezeRecord } from '../workflows/definitions';
import { costChart, parityChart } from './charts';
import { renderCloseout, type ModelArtifactRef } from './closeout-report';
import { workOf } from './estimate';
import { childRef, type ArtifactStore } from '../common/artifact-store';
import { fetchStored, frozenKey, scratchDir, storeFailure } from './artifacts';
import { fileSha256, listFiles, MANIFEST, renderManifest, verifyManifest } from './manifest';
import { parseRuntimeResult, resultFiles } from './runtime-json';
import type { FreezeInput } from './types';

export interface GitInfo {
  commit: string;
  dirty: boolean;
}

/** The git commit and dirty flag of the code that ran. Always written: "unknown" when not in a git checkout. */
export function gitInfo(repoRoot: string): GitInfo {
  try {
    const commit = execFileSync('git', ['-C', repoRoot, 'rev-parse', 'HEAD'], { encoding: 'utf8' }).trim();
    const status = execFileSync('git', ['-C', repoRoot, 'status', '--porcelain'], { encoding: 'utf8' });
    return { commit, dirty: status.trim().length > 0 };
  } catch {
    return { commit: 'unknown (not a git checkout)', dirty: true };
  }
}

function write(file: string, content: string): void {
  mkdirSync(path.dirname(file), { recursive: true });
  writeFileSync(file, content);
}

function makeReadOnly(dir: string): void {
  for (const name of readdirSync(dir)) {
    const p = path.join(dir, name);
    if (statSync(p).isDirectory()) makeReadOnly(p);
    else chmodSync(p, 0o444);
  }
  chmodSync(dir, 0o555);
}

/** Undoes makeReadOnly (a crashed freeze's leftovers; a copy of frozen artifacts in tests). */
export function makeWritable(dir: string): void {
  chmodSync(dir, 0o755);
  for (const name of readdirSync(dir)) {
    const p = path.join(dir, name);
    if (statSync(p).isDirectory()) makeWritable(p);
    else chmodSync(p, 0o644);
  }
}

export interface FreezeDeps {
  artifactsDir: string;
  workDir: string;
  repoRoot: string;
  store: ArtifactStore;
}

/**
 * Freezes on this worker's disk (`<artifacts>/<phaseId>`, read-only), then publishes the folder to the artifact
 * store, the manifest last; the record names the store's copy. With a shared store, a freeze that completed on
 * another worker is fetched first, so a retry anywhere returns the same record and never writes a second set.
 */
export async function freezePhase(deps: FreezeDeps, freeze: FreezeInput, heartbeat: () => void = () => undefined): Promise<FreezeRecord> {
  try {
    const dir = path.join(deps.artifactsDir, freeze.input.phaseId);
    const key = frozenKey(freeze.input.phaseId);
    const pulled = deps.store.kind !== 'local' && !existsSync(path.join(dir, MANIFEST)) && (await pullFrozen(deps.store, key, dir));
    const local = await freezeLocally(deps, freeze, heartbeat);
    heartbeat();
    // A set fetched from the store is already there, complete: it is checked above, never stored again.
    const stored = pulled ? deps.store.refOf(key) : await deps.store.putFiles(key, local.dir, [...listFiles(local.dir), MANIFEST]);
    return { ...local, dir: stored, manifestPath: childRef(stored, MANIFEST), reportPath: childRef(stored, 'closeout.md') };
  } catch (err) {
    throw storeFailure(err);
  }
}

/** Copies a complete frozen set (its manifest is stored last) from the store into `dir`; nothing if there is none. */
async function pullFrozen(store: ArtifactStore, key: string, dir: string): Promise<boolean> {
  const ref = store.refOf(key);
  const scratch = `${dir}.pulled`;
  rmSync(scratch, { recursive: true, force: true });
  const fetched = await store.fetch(ref, scratch);
  if (fetched === null || !existsSync(path.join(fetched, MANIFEST))) {
    rmSync(scratch, { recursive: true, force: true });
    return false;
  }
  if (existsSync(dir)) {
    makeWritable(dir);
    rmSync(dir, { recursive: true, force: true });
  }
  mkdirSync(path.dirname(dir), { recursive: true });
  renameSync(fetched, dir);
  return true;
}

async function freezeLocally(deps: FreezeDeps, freeze: FreezeInput, heartbeat: () => void): Promise<FreezeRecord> {
  heartbeat();
  const { input, state } = freeze;
  const dir = path.join(deps.artifactsDir, input.phaseId);
  const manifestPath = path.join(dir, MANIFEST);
  const reportPath = path.join(dir, 'closeout.md');

  if (existsSync(manifestPath)) {
    // Only the retry of a freeze that already completed gets here legitimately: same phase, intact files.
    const report = verifyManifest(dir);
    const phase = JSON.parse(readFileSync(path.join(dir, 'phase.json'), 'utf8')) as { protocolHash?: string; git?: GitInfo };
    if (report.ok && phase.protocolHash === input.protocolHash && phase.git !== undefined) {
      // The earlier attempt may have died between writing the manifest and making the files read-only.
      makeReadOnly(dir);
      return { dir, manifestPath, manifestSha256: fileSha256(manifestPath), reportPath, fileCount: report.checked, gitCommit: phase.git.commit, gitDirty: phase.git.dirty };
    }
    throw ApplicationFailure.create({
      type: ErrorTypes.alreadyFrozen,
      message: `${dir} is already frozen and does not match this phase's data; frozen artifacts are never rewritten`,
      nonRetryable: true,
    });
  }
  // A freeze that crashed half-way left an unfrozen folder: start it over.
  if (existsSync(dir)) {
    makeWritable(dir);
    rmSync(dir, { recursive: true, force: true });
  }
  mkdirSync(dir, { recursive: true });

  const git = gitInfo(deps.repoRoot);
  const p = input.protocol;
  const refs: ModelArtifactRef[] = [];
  for (const model of p.models) {
    const progress = state.models.find((m) => m.modelKey === model.key);
    if (progress?.resultPath === undefined) continue;
    // The run may have been made on another worker: its result and directions are fetched here first.
    const resultPath = await fetchStored(deps.store, progress.resultPath, scratchDir(deps.workDir, input.phaseId, 'runs', model.key), `the result of ${model.key}`);
    const result = parseRuntimeResult(resultPath);
    const runDir = path.dirname(resultPath);
    // Every file the proof reads (the reference's and the native reads' directions too), so that the frozen
    // artifacts can be scored again; the result's schema keeps them all in the run's directions/.
    const directions: string[] = [];
    for (const file of resultFiles(result)) {
      const rel = path.join('directions', model.key, path.basename(file));
      mkdirSync(path.join(dir, path.dirname(rel)), { recursive: true });
      copyFileSync(path.join(runDir, file), path.join(dir, rel));
      directions.push(rel);
    }
    heartbeat();
    const artifactRel = path.join('models', `${model.key}.json`);
    const ledger = state.ledger.filter((e) => e.modelKey === model.key);
    const artifact = {
      artifact_version: 1,
      phase_id: input.phaseId,
      model: { key: model.key, id: model.id, revision: model.revision, gpu: model.gpu, dtype: model.dtype },
      workload: { units: p.methods.length * p.repeats + 1, eval_prompts: p.eval_prompt_count, max_new_tokens: p.sampling.max_new_tokens, work: workOf(p) },
      score: state.score?.models.find((s) => s.modelKey === model.key) ?? null,
      result,
      directions,
      provenance: {
        git_commit: git.commit,
        git_dirty: git.dirty,
        protocol_hash: input.protocolHash,
        protocol_path: input.protocolPath,
        prompt_sha256: { harmful: input.prompts.harmful.sha256, harmless: input.prompts.harmless.sha256, eval: input.prompts.eval.sha256 },
        runtime_environment: result.environment,
        backend: p.backend,
        backend_ids: progress.backendIds,
        resolved_model_path: result.model.resolved_path,
      },
      ledger,
    };
    write(path.join(dir, artifactRel), `${JSON.stringify(artifact, null, 2)}\n`);
    refs.push({
      modelKey: model.key,
      modelId: model.id,
      gpu: model.gpu,
      artifactPath: artifactRel,
      backendIds: progress.backendIds,
      resolvedPath: result.model.resolved_path,
      versions: Object.fromEntries(
        Object.entries(result.environment).filter((e): e is [string, string] => typeof e[1] === 'string' && ['python', 'torch', 'transformers', 'nnsight', 'pyvene', 'numpy', 'device_name'].includes(e[0])),
      ),
    });
  }

  if (state.score !== null) copyFileSync(await fetchStored(deps.store, state.score.scorePath, scratchDir(deps.workDir, input.phaseId, 'score'), 'the score'), path.join(dir, 'score.json'));
  write(path.join(dir, 'phase.json'), `${JSON.stringify({ phaseId: input.phaseId, protocolHash: input.protocolHash, protocol: p, prompts: input.prompts, pricing: input.pricing, people: input.people, git, state }, null, 2)}\n`);
  write(path.join(dir, 'parity.svg'), parityChart(state.score?.models ?? [], p.parity.min_cosine));
  write(
    path.join(dir, 'cost.svg'),
    costChart(
      p.models.map((m) => ({ modelKey: m.key, estimateUsd: state.estimate?.models.find((e) => e.modelKey === m.key)?.usd ?? 0, ledger: state.ledger.filter((e) => e.modelKey === m.key) })),
      state.budget.approvedUsd,
    ),
  );
  write(reportPath, renderCloseout({ freeze, generatedAt: new Date().toISOString(), gitCommit: git.commit, gitDirty: git.dirty, models: refs }));
  write(manifestPath, renderManifest(dir));
  makeReadOnly(dir);
  return { dir, manifestPath, manifestSha256: fileSha256(manifestPath), reportPath, fileCount: verifyManifest(dir).checked, gitCommit: git.commit, gitDirty: git.dirty };
}
