// ESLint flat config. Workflow code (workflows/ and the pure domain/ modules it imports) runs in Temporal's deterministic sandbox: it must not import Node
// built-ins (no I/O, no clocks of its own) and must not leave promises floating, or replays diverge.
import js from '@eslint/js';
import tseslint from 'typescript-eslint';

export default tseslint.config(
  { ignores: ['lib/**', 'node_modules/**', 'runtime/**', 'coverage/**', '.phasegate/**', 'bench/out/**'] },
  js.configs.recommended,
  ...tseslint.configs.recommendedTypeChecked,
  {
    languageOptions: {
      parserOptions: { projectService: { allowDefaultProject: ['*.js', '*.mjs'] }, tsconfigRootDir: import.meta.dirname },
    },
    rules: {
      '@typescript-eslint/no-floating-promises': 'error',
      '@typescript-eslint/no-explicit-any': 'error',
      '@typescript-eslint/no-unused-vars': ['error', { argsIgnorePattern: '^_', varsIgnorePattern: '^_' }],
    },
  },
  {
    files: ['workflows/**/*.ts', 'domain/**/*.ts'],
    rules: {
      '@typescript-eslint/no-restricted-imports': [
        'error',
        {
          patterns: [
            { group: ['node:*'], message: 'Workflow code must not use Node built-ins (determinism).' },
            { group: ['zod', 'zod/*'], allowTypeImports: true, message: 'Validate at the edges; zod stays out of the workflow bundle.' },
            { group: ['../activities', '../activities/*', '../protocols/*'], allowTypeImports: true, message: 'Workflow code imports activities and protocols as types only.' },
          ],
          paths: ['fs', 'path', 'child_process', 'crypto', 'os', 'http', 'https', 'net', 'process', 'pino'].map((name) => ({
            name,
            message: 'Workflow code must not use Node built-ins or I/O libraries (determinism).',
          })),
        },
      ],
    },
  },
  {
    files: ['**/*.js', '**/*.mjs'],
    ...tseslint.configs.disableTypeChecked,
    languageOptions: { globals: { module: 'readonly', require: 'readonly', __dirname: 'readonly' } },
  },
  {
    // The console's script runs in the browser, unbundled.
    files: ['client/console/assets/*.js'],
    languageOptions: {
      sourceType: 'script',
      parserOptions: { projectService: false, project: false, program: null },
      globals: Object.fromEntries(
        ['window', 'document', 'location', 'history', 'fetch', 'sessionStorage', 'indexedDB', 'crypto', 'atob', 'btoa', 'TextDecoder', 'URL', 'URLSearchParams', 'Blob', 'setTimeout', 'clearTimeout'].map((g) => [g, 'readonly']),
      ),
    },
  },
);
