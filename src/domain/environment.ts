/** Where a token may be used; every token belongs to exactly one. */
export type Environment = "development" | "staging" | "production";

/** All environments, in a fixed order. */
export const ENVIRONMENTS: readonly Environment[] = ["development", "staging", "production"];

/** The token prefix of each environment. */
export const ENVIRONMENT_PREFIX: Readonly<Record<Environment, string>> = Object.freeze({
  development: "cf-",
  staging: "cfstg-",
  production: "cfprd-",
});

const ALIASES: Readonly<Record<string, Environment>> = Object.freeze({
  development: "development",
  dev: "development",
  staging: "staging",
  stage: "staging",
  production: "production",
  prod: "production",
});

/**
 * Reads an environment name as operators write it (`development|staging|production`,
 * or `dev|stage|prod`, any case). Returns undefined for anything else.
 */
export function parseEnvironment(value: string): Environment | undefined {
  return ALIASES[value.trim().toLowerCase()];
}
