/** The workflow bundle's entry: every workflow the worker registers. */
export { phaseWorkflow } from './phase';
export { notifyWorkflow } from './notify';
