// Names for the generated API types (schema.d.ts comes from the Rust types; see
// scripts/web-types).
import type { components } from './schema';

type Schemas = components['schemas'];

export type Message = Schemas['Message'];
export type MessagePage = Schemas['MessagePage'];
export type Usage = Schemas['Usage'];
export type Proposal = Schemas['Proposal'];
export type ConfirmBody = Schemas['ConfirmBody'];
export type Confirmed = Schemas['Confirmed'];
export type Task = Schemas['Task'];
export type TaskStatus = Schemas['TaskStatus'];
export type TaskDetail = Schemas['TaskDetail'];
export type TaskRun = Schemas['TaskRun'];
export type TaskInputRecord = Schemas['TaskInputRecord'];
export type TaskQuestion = Schemas['TaskQuestion'];
export type TaskLogLine = Schemas['TaskLogLine'];
export type Cost = Schemas['Cost'];
export type InboxItem = Schemas['InboxItem'];
export type InboxKind = Schemas['InboxKind'];
export type Project = Schemas['Project'];
export type SessionInfo = Schemas['SessionInfo'];
export type AppConfig = Schemas['AppConfig'];
export type ReviewBody = Schemas['ReviewBody'];
export type BudgetBody = Schemas['BudgetBody'];
export type TaskBudget = Schemas['TaskBudget'];
export type MessageStarted = Schemas['MessageStarted'];
export type MessageDelta = Schemas['MessageDelta'];
export type MessageWaiting = Schemas['MessageWaiting'];
export type ModelLimit = Schemas['ModelLimit'];
export type ThreadNotice = Schemas['ThreadNotice'];
export type TaskLogEvent = Schemas['TaskLogEvent'];
export type TaskInputEvent = Schemas['TaskInputEvent'];
