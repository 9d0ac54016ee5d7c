#include "peft.h"
#include <stdio.h>
int main(void) { printf("peft %s\n", PEFT_VERSION); return 0; }
