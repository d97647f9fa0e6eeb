import js from '@eslint/js';
import globals from 'globals';
import tseslint from 'typescript-eslint';

export default tseslint.config(
  { ignores: ['node_modules/', 'bench/results/'] },
  js.configs.recommended,
  ...tseslint.configs.recommended,
  {
    languageOptions: { globals: globals.node },
    rules: {
      'no-console': ['error', { allow: ['error', 'log'] }],
      '@typescript-eslint/no-non-null-assertion': 'off',
    },
  },
  // The storefront runs in the browser.
  { files: ['public/**/*.js'], languageOptions: { globals: globals.browser } },
);
