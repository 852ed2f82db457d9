/* Fault injection for tests (thawcore_fault_inject): the failure points of the pipeline
 * ask whether an armed fault fires here. Costs one relaxed atomic load when disarmed. */
#ifndef THAW_FAULT_H
#define THAW_FAULT_H

/* Non-zero when the armed fault of this kind fires at this hit. */
int thaw_fault_hit(int kind);

#endif
